"""Run-time plumbing shared by stages and the CLI: logging, seeds, devices, metadata."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import random
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.io import read_json, write_json

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


def unit_hash(seed: int, row_id: str) -> float:
    """A number in [0, 1) fixed by ``seed`` and ``row_id``: a seeded draw that stays put.

    A cryptographic hash of (seed, id) rather than a seeded permutation: a row's draw depends
    on nothing but its own id, so it stays put when rows are added or removed (the corpus's
    train/dev split, ``prepare_source``'s sample).
    """
    digest = hashlib.sha256(f"{seed}\x1f{row_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def resolve_device(device: str, gpu_count: Callable[[], int] | None = None) -> str:
    """Resolve ``auto`` to ``cuda`` when a GPU is visible, else ``cpu``.

    Args:
        device: ``auto``, ``cpu`` or ``cuda``.
        gpu_count: How the engine that will run counts GPUs; ``None``: torch's (the torch
            stages). Translation passes CTranslate2's, which may see none where torch sees one.

    Raises:
        ValueError: Another device name, or ``cuda`` with no GPU visible to the engine.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got '{device}'")
    if device == "cpu":
        return device
    if gpu_count is None:
        import torch

        gpu_count = torch.cuda.device_count
    visible = gpu_count() > 0
    if device == "cuda" and not visible:
        raise ValueError("device 'cuda' was asked for but no GPU is visible; run "
                         "`multiway doctor` for the cause, or set device: auto or cpu")
    return "cuda" if visible else "cpu"


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


def run_context() -> dict[str, Any]:
    """What differs between runs of the same code and data: machine, date, git revision.

    For ``data/runtime/`` (see :func:`pipeline.cli.execute`) and logs only: no DVC output
    may hold any of it, or every rerun would change its hash.
    """
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh
                        if line.startswith("model name")), cpu)
    return {
        "cpu_model": cpu, "cpu_count": os.cpu_count(), "hostname": platform.node(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git": git_revision(),
    }


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


#: Written into a resumable stage's work directory first: what its state was made from.
FINGERPRINT_FILE = "fingerprint.json"


def fingerprint(**parts: Any) -> str:
    """SHA-256 of the canonical JSON (sorted keys) of ``parts``.

    Args:
        **parts: JSON-able values an output depends on: config, input hashes
            (:func:`file_hash`), resolved device and precision, :func:`code_version`.

    Returns:
        The hex digest.
    """
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def code_version(*modules: str) -> str:
    """SHA-256 of the Python source of ``modules`` (a package: every ``*.py`` under it)."""
    h = hashlib.sha256()
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise ValueError(f"code_version: no module named '{name}'")
        origin = Path(spec.origin)
        root = origin.parent
        files = sorted(root.rglob("*.py")) if spec.submodule_search_locations else [origin]
        for f in files:
            h.update(f"{name}:{f.relative_to(root)}".encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def training_parts(cfg: Any, langs: Any, device: str, code: tuple[str, ...],
                   neutral: tuple[str, ...], **inputs: Any) -> dict[str, Any]:
    """The fingerprint parts of a training run, for :func:`claim_work_dir`.

    Args:
        cfg: The stage config; its matrix lists and the ``neutral`` fields (those that do not
            change the trained weights) are left out.
        langs: The shared ``langs`` config.
        device: The resolved device.
        code: Modules whose source the weights depend on (:func:`code_version`).
        neutral: Config fields that do not change the trained weights (a rerun may change
            them and still resume).
        **inputs: What else the run depends on (input hashes, seed, precision...).
    """
    from pipeline.config import item_dict, to_dict

    return {"config": {k: v for k, v in item_dict(cfg).items() if k not in neutral},
            "langs": to_dict(langs), **inputs, "device": device,
            "code": code_version(*code), "versions": package_versions()}


def claim_work_dir(work: str | Path, what: str, **parts: Any) -> bool:
    """Tie a resumable stage's work directory to the fingerprint of ``parts``.

    State made from the same parts is kept for resuming. Any other state (another
    fingerprint, or none recorded) is deleted with one log line naming the parts that
    changed, never resumed. The fingerprint is written before any new state, so state on
    disk always belongs to the fingerprint next to it.

    Args:
        work: The work directory (created when missing).
        what: What the state is, for the log line (``checkpoints``, ``shards``).
        **parts: What the state depends on, as for :func:`fingerprint`.

    Returns:
        True when ``work`` holds state of the same fingerprint (resume), else False.
    """
    work = Path(work)
    stamp = work / FINGERPRINT_FILE
    new = {name: fingerprint(**{name: value}) for name, value in parts.items()}
    if work.is_dir() and any(work.iterdir()):
        try:
            old = read_json(stamp)["parts"]
        except (OSError, ValueError, KeyError, TypeError):
            old = {}
        if old == new:
            return True
        changed = sorted(k for k in new.keys() | old.keys() if old.get(k) != new.get(k))
        logger.warning("discarding stale %s in %s: fingerprint changed (%s)", what, work,
                       ", ".join(changed) if old else "none recorded")
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    write_json({"parts": new}, stamp)
    return False


def write_meta(path: str | Path, config: dict[str, Any], **extra: Any) -> None:
    """Write ``meta.json``: resolved config, package versions and any extra fields.

    A DVC output: nothing in it may change between reruns (no git revision, date or time;
    those are in ``data/runtime/``).
    """
    write_json({"config": config, "versions": package_versions(), **extra}, path)


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
