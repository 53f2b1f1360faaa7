"""Shared test setup: offline, single-threaded (the CI machine has 2 shared cores)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Session fixtures shared across test modules live in tests/fixtures/*.py.
pytest_plugins = [
    "tests.fixtures.nmt",
    "tests.fixtures.hub",
]


def pytest_collection_modifyitems(items):
    """Run the paper profile's end-to-end module (about 6 of the suite's 11 CPU-minutes) first.

    Under `make test` (`-n 2 --dist loadfile`) one worker then spends the run on it while the
    other takes every other module, instead of both finishing it and their share late.
    """
    items.sort(key=lambda item: item.nodeid.split("::")[0] != "tests/test_paper_profile.py")
