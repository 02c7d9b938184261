"""Test set-up shared by every test file.

* Without a CUDA GPU, Triton kernels run under the Triton interpreter on CPU:
  ``TRITON_INTERPRET=1`` must be set before ``triton`` is first imported, so it
  is set here, at collection time, before any test module imports a kernel.
* Tests marked ``gpu`` are skipped when CUDA is absent.
* ``--poison-alloc`` (or ``SPANBERT_POISON_ALLOC=1``): every tensor from ``torch.empty``
  and its relatives starts as NaN (integers: an out-of-range sentinel), so a kernel
  that reads memory before writing it fails every time instead of on one machine in N
  (tests/poison.py). ``.ci/run`` runs the kernel tests this way.
"""
import os

import pytest
import torch

import poison

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_addoption(parser):
    parser.addoption(
        "--poison-alloc", action="store_true",
        help=f"fill every fresh torch.empty* tensor with NaN / an integer sentinel (also: {poison.ENV_VAR}=1)",
    )


def poison_requested(config) -> bool:
    return config.getoption("--poison-alloc") or os.environ.get(poison.ENV_VAR, "0") not in ("", "0")


def pytest_configure(config):
    if poison_requested(config):
        poison.install()


def pytest_report_header(config):
    if poison.installed():
        return "allocations: poisoned (NaN floats, sentinel integers; tests/poison.py)"
    return None


def pytest_unconfigure(config):
    poison.uninstall()


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
