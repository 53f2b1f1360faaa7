"""Importing CTranslate2 so that it finds cuBLAS 12 on machines that carry only CUDA 13.

CTranslate2 4.x wheels are built against CUDA 12 and open ``libcublas.so.12`` (and
``libcublasLt.so.12``) by name when a model first runs on the GPU. Machines set up for current
torch builds (``+cu130``) have only cuBLAS 13, so translation would stop at the first batch.
NVIDIA's ``nvidia-cublas-cu12`` wheel (the project's ``gpu`` extra) ships both libraries;
loading them globally before CTranslate2 makes its later ``dlopen`` find them by soname.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import sys
from pathlib import Path
from types import ModuleType

logger = logging.getLogger(__name__)

#: Loaded in this order: libcublas.so.12 needs libcublasLt.so.12.
CUBLAS12 = ("libcublasLt.so.12", "libcublas.so.12")
#: The fix named wherever cuBLAS 12 is missing.
CUBLAS12_FIX = ("install NVIDIA's cuBLAS 12 wheel into the project's environment "
                "(`make setup GPU=1`, or `pip install nvidia-cublas-cu12`)")


def cublas12_wheel_dir() -> Path | None:
    """The ``lib`` directory of the ``nvidia-cublas-cu12`` wheel, or ``None`` when absent."""
    spec = importlib.util.find_spec("nvidia.cublas") if importlib.util.find_spec("nvidia") else None
    for root in (spec.submodule_search_locations or []) if spec else []:
        lib = Path(root) / "lib"
        if (lib / CUBLAS12[1]).is_file():
            return lib
    return None


def load_cublas12() -> str | None:
    """Load cuBLAS 12 globally (from the wheel if installed, else the system's).

    Returns:
        ``None`` when both libraries loaded, else the loader's message for the first that did
        not (CTranslate2 would then fail on the GPU).
    """
    wheel = cublas12_wheel_dir()
    for name in CUBLAS12:
        try:
            ctypes.CDLL(str(wheel / name) if wheel else name, mode=ctypes.RTLD_GLOBAL)
        except OSError as exc:
            return str(exc)
    return None


def import_ctranslate2() -> ModuleType:
    """Import ``ctranslate2``, loading cuBLAS 12 first where the machine has a GPU for it."""
    if "ctranslate2" not in sys.modules and cublas12_wheel_dir() is not None:
        problem = load_cublas12()
        if problem:
            logger.warning("cuBLAS 12 from the nvidia-cublas-cu12 wheel did not load: %s", problem)
    import ctranslate2

    return ctranslate2
