"""Run-time plumbing shared by stages and the CLI: logging, seeds, devices, metadata."""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import platform
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.io import write_json

logger = logging.getLogger(__name__)

_PACKAGES = (
    "torch", "transformers", "sentence-transformers", "ctranslate2", "sentencepiece",
    "datasets", "faiss-cpu", "mteb", "dvc", "sacrebleu",
)


def setup_logging(level: int = logging.INFO) -> None:
    """Install one stderr handler on the root logger (called by entry points only)."""
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and (when imported) torch."""
    random.seed(seed)
    import numpy as np

    np.random.seed(seed)
    if "torch" in sys.modules:
        import torch

        torch.manual_seed(seed)


def resolve_device(device: str) -> str:
    """Resolve ``auto`` to ``cuda`` when a GPU is visible, else ``cpu``.

    Uses CTranslate2's device count when torch is not needed, so translation does not pay
    torch's import time.
    """
    if device != "auto":
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got '{device}'")
        return device
    try:
        import ctranslate2

        return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    except ImportError:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


def git_revision() -> str:
    """Current git commit (with ``-dirty`` when the tree has changes), or ``unknown``."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    """Installed versions of the packages results depend on."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def file_hash(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file (or of all files under a directory, in sorted order)."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with open(f, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    return h.hexdigest()


def write_meta(path: str | Path, config: dict[str, Any], **extra: Any) -> None:
    """Write ``meta.json``: resolved config, versions, git revision and any extra fields."""
    write_json(
        {"config": config, "versions": package_versions(), "git": git_revision(), **extra},
        path,
    )


def run_entry(fn: Callable[[], Any]) -> int:
    """Run an entry point; turn user mistakes into one line on stderr and exit status 2.

    ``ValueError`` and ``FileNotFoundError`` are what ``pipeline`` raises for bad input, so
    they are reported without a traceback; anything else is a bug and keeps its traceback.
    """
    setup_logging()
    try:
        fn()
    except (ValueError, FileNotFoundError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    return 0


def limit_threads(n: int) -> None:
    """Cap BLAS/OpenMP/torch threads (oversubscribed shared cores slow down badly)."""
    os.environ["OMP_NUM_THREADS"] = str(n)
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(n)
