"""multiway-align: multi-way corpora, encoder alignment, mteb evaluation, zero-shot transfer.

Importing the package pins the instruction set of the numeric libraries it uses on CPU, so
translation, the corpus, mining and faiss give the same bytes on any x86-64 CPU with AVX2, an
Intel Xeon with AVX-512 and an AMD EPYC without it alike. Left alone, each library picks its
kernels by CPU vendor and model: CTranslate2 multiplies int8 matrices with Intel MKL on Intel
CPUs and with oneDNN elsewhere; oneDNN, torch, OpenBLAS (numpy), numpy's own loops and faiss
take AVX-512 code where the CPU has it; and the sums come out in another order. The pins must
be in the environment before those libraries load, hence here: a stage's first import is this
package.

torch's matrix products are not pinned: MKL computes them with kernels of its own choice, the
same on every machine of one CPU model, not on Intel vs AMD, so the torch stages differ there in
the last bits. MKL's COMPATIBLE branch (``MKL_CBWR=COMPATIBLE``) did not remove that: measured
on an Intel Xeon and an AMD EPYC it gave different training bits too, at 2.4-3.1x the training
time (``benchmarks/cpu_isa.py``, docs/benchmarks.md).

``MULTIWAY_CPU_ISA`` chooses: ``avx2`` (default) sets the pins; ``native`` turns them off (each
library's fastest kernels, outputs that depend on the CPU). A variable already set in the
environment is left as it is. What the pins cost in speed is measured by
``benchmarks/cpu_isa.py`` (docs/benchmarks.md).
"""

import os

CPU_PINS = {
    # CTranslate2: oneDNN (vendor-neutral) instead of MKL for GEMM, AVX2 kernels of its own.
    "CT2_USE_MKL": "0",
    "CT2_FORCE_CPU_ISA": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    # torch's own kernels; numpy's OpenBLAS; faiss's distance kernels.
    "ATEN_CPU_CAPABILITY": "avx2",
    "OPENBLAS_CORETYPE": "Haswell",
    "FAISS_SIMD_LEVEL": "AVX2",
}
# numpy's own SIMD loops; set only where the CPU has AVX-512 (numpy warns about disabling a
# feature the CPU lacks).
AVX512_PINS = {"NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR"}


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            return next((set(line.split(":", 1)[1].split()) for line in fh
                         if line.startswith("flags")), set())
    except OSError:
        return set()


_MODE = os.environ.get("MULTIWAY_CPU_ISA", "avx2").lower()
if _MODE not in ("avx2", "native"):
    raise SystemExit(f"error: MULTIWAY_CPU_ISA must be avx2 or native, got {_MODE!r}")
_FLAGS = _cpu_flags() if _MODE != "native" else set()
if "avx2" in _FLAGS:
    _pins = {**CPU_PINS, **(AVX512_PINS if "avx512f" in _FLAGS else {})}
    for _key, _value in _pins.items():
        os.environ.setdefault(_key, _value)
