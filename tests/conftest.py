"""Test set-up shared by every test file.

* Without a CUDA GPU, Triton kernels run under the Triton interpreter on CPU:
  ``TRITON_INTERPRET=1`` must be set before ``triton`` is first imported, so it
  is set here, at collection time, before any test module imports a kernel.
* Tests marked ``gpu`` are skipped when CUDA is absent.
"""
import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _fixed_seed():
    """Every test starts from the same RNG state, so failures reproduce."""
    torch.manual_seed(0)
    yield
