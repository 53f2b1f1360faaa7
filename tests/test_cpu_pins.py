"""The instruction-set pins of ``pipeline/__init__.py``, seen from the libraries themselves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pipeline

ROOT = Path(__file__).resolve().parents[1]
NMT = ROOT / "data/models/nmt/bible-marian"
PROBE = f"""
import pipeline, ctranslate2, torch
ctranslate2.Translator({str(NMT)!r}, device="cpu", intra_threads=1)
print("torch:", torch.backends.cpu.get_cpu_capability())
"""
PIN_KEYS = {*pipeline.CPU_PINS, *pipeline.AVX512_PINS}


def _probe(mode: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in PIN_KEYS}
    env.pop("MULTIWAY_CPU_ISA", None)
    env.update({"CT2_VERBOSE": "1", **({"MULTIWAY_CPU_ISA": mode} if mode else {})})
    return subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def test_ctranslate2_runs_onednn_with_avx2_and_torch_avx2():
    # Every machine the project runs on has AVX2 (the pins are skipped on older CPUs).
    assert "avx2" in pipeline._cpu_flags()
    done = _probe(None)
    assert done.returncode == 0, done.stderr
    assert "Selected ISA: AVX2" in done.stderr
    assert "Use Intel MKL: false" in done.stderr
    assert "GEMM_S8 backend: DNNL" in done.stderr
    assert "torch: AVX2" in done.stdout


def test_native_leaves_the_libraries_their_own_choice():
    done = _probe("native")
    assert done.returncode == 0, done.stderr
    intel = "GenuineIntel" in done.stderr
    # CTranslate2's own default: MKL on Intel CPUs, oneDNN elsewhere.
    assert ("Use Intel MKL: true" in done.stderr) == intel


def test_a_bad_mode_fails_in_one_line():
    env = {k: v for k, v in os.environ.items() if k not in PIN_KEYS}
    bad = subprocess.run([sys.executable, "-c", "import pipeline"], cwd=ROOT, capture_output=True,
                         text=True, env={**env, "MULTIWAY_CPU_ISA": "fast"}, check=False)
    assert bad.returncode != 0
    assert bad.stderr.strip().splitlines() == [
        "error: MULTIWAY_CPU_ISA must be avx2 or native, got 'fast'"]
