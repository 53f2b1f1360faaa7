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
