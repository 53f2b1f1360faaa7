"""benchmarks/gpu.py: the --tiny CPU run writes every section (no timing is asserted)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks/gpu.py"


def _module():
    if "benchmark_gpu" not in sys.modules:
        if str(SCRIPT.parent) not in sys.path:  # as `python benchmarks/gpu.py` has it
            sys.path.append(str(SCRIPT.parent))  # for its `from _shared import ...`
        spec = importlib.util.spec_from_file_location("benchmark_gpu", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules["benchmark_gpu"] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules["benchmark_gpu"]


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu") / "gpu-tiny.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--device", "cpu",
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_tiny_run_writes_every_section(tiny_run):
    result, stdout = tiny_run
    module = _module()
    assert result["tiny"] is True
    assert result["machine"]["device"] == "cpu" and result["machine"]["cpu"]
    assert result["peak_bf16_tflops"] is None  # no GPU, no MFU
    assert list(result["parts"]) == list(module.PARTS)
    for name, part in result["parts"].items():
        assert part["status"] in ("ok", "skipped"), (name, part)
        if part["status"] == "skipped":
            assert isinstance(part["reason"], str) and part["reason"], name
            continue
        if name == "translate":
            keys = ("seconds", "sentences", "target_tokens", "target_tokens_per_s",
                    "sentences_per_s")
            assert part["device"] in ("cpu", "cuda")
        else:
            keys = ("tokens_per_step", "tokens_per_s", "sentences_per_s",
                    "model_tflop_per_step", "achieved_tflops")
            assert all(_number(part["step_s"][k]) for k in ("median", "mean", "min", "max"))
            assert part["timed_steps"] >= 1
            assert part["mfu"] is None and part["peak_memory_gib"] is None  # CPU
        assert all(_number(part[k]) for k in keys), (name, part)
        if name.startswith("drmim"):
            assert _number(part["predict"]["sentences_per_s"])
    # This environment has every library, so nothing is skipped here.
    assert all(p["status"] == "ok" for p in result["parts"].values())
    mw = result["parts"]["train_multiway"]
    assert mw["loss"] == "CachedMultiwayInfoNCELoss" and mw["columns"] == 7
    assert mw["flops_passes"] == 4 and mw["activation_checkpointing"] is False
    assert result["parts"]["train_enx"]["loss"] == "BilingualInfoNCELoss"
    assert result["parts"]["train_enx_ckpt"]["activation_checkpointing"] is True
    assert result["parts"]["train_enx_cached"]["loss"] == "CachedBilingualInfoNCELoss"
    assert "TINY" in stdout


def test_tiny_run_estimates_the_paper_profile(tiny_run):
    result, _ = tiny_run
    estimate = result["estimate"]
    hours = estimate["gpu_hours"]
    assert _number(hours["train_encoder"]["gpu_hours"])
    assert _number(hours["train_encoder"]["per_seed_gpu_hours"])
    assert hours["train_encoder"]["steps_per_run"] == estimate["profile"]["max_steps"] == 2000
    assert _number(hours["evaluate"]["gpu_hours_bf16"])
    assert _number(hours["train_drmim"]["gpu_hours_bf16_sdpa"])
    assert all(_number(v) for v in estimate["total_gpu_hours"].values())
    assert estimate["profile"]["source"].startswith("configs/profiles/paper.yaml")
    assert any("TINY" in a for a in estimate["assumptions"])
    assert "MFU" in result["mfu_formula"]


def test_a_missing_library_is_a_skip_not_a_crash():
    module = _module()

    def needs_missing():
        import a_library_that_is_not_installed  # noqa: F401

    def cannot_run():
        raise module.Skip("why")

    def broken():
        raise RuntimeError("boom")

    skipped = module.run_part("x", needs_missing, "cpu")
    assert skipped["status"] == "skipped" and "a_library_that_is_not_installed" in skipped["reason"]
    assert module.run_part("y", cannot_run, "cpu")["reason"] == "why"
    failed = module.run_part("z", broken, "cpu")
    assert failed["status"] == "error" and "boom" in failed["reason"]


def test_peak_flops_from_the_gpu_name():
    module = _module()
    assert module.peak_tflops("NVIDIA H100 80GB HBM3", None)[0] == 989.0
    assert module.peak_tflops("NVIDIA H100 PCIe", None)[0] == 756.0
    assert module.peak_tflops("NVIDIA H200", None)[0] == 989.0
    assert module.peak_tflops("NVIDIA H200 NVL", None)[0] == 835.0
    assert module.peak_tflops("NVIDIA A100-SXM4-80GB", None)[0] == 312.0
    assert module.peak_tflops("NVIDIA L40S", None)[0] == 362.0
    assert module.peak_tflops("NVIDIA RTX A1000", None)[0] is None
    assert module.peak_tflops("Some Future GPU", None)[0] is None
    assert module.peak_tflops("Some Future GPU", 1000.0)[0] == 1000.0
    assert module.peak_tflops(None, None)[0] is None
