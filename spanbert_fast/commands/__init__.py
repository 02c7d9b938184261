"""One module per ``spanbert-fast`` subcommand; each exposes ``register(subparsers)``."""
