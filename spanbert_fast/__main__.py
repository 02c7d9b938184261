import sys

from spanbert_fast.cli import main

sys.exit(main())
