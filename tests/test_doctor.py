"""``multiway doctor``: one line per problem with its fix, exit status 1; silent success.

The paper profile is checked the way a user with an empty HF cache and no hub meets it (a
subprocess with ``HF_HUB_OFFLINE=1`` and an empty ``HF_HOME``: the hub libraries read both at
import); the GPU and disk checks are driven by patching what torch, CTranslate2 and the file
system report, since this machine has no GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

from pipeline import cli, doctor
from pipeline.profiles import apply_profile

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def paper_params(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    apply_profile("paper", str(params))
    return params


def test_default_profile_passes_and_records_success(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    record = tmp_path / "doctor.json"
    assert cli.main(["doctor", "--record", str(record)]) == 0
    assert capsys.readouterr().out.startswith("doctor: all checks passed (0 GPU(s) needed")
    assert json.loads(record.read_text()) == {"passed": True}


def test_paper_profile_on_an_empty_cache_names_every_missing_model_and_dataset(
        tmp_path, paper_params):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "OMP_NUM_THREADS": "1"}
    env.pop("HF_HUB_CACHE", None), env.pop("HF_DATASETS_CACHE", None)
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "doctor", "--params",
                           str(paper_params)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == f"doctor: {len(lines) - 1} problem(s) in {paper_params}"
    s = doctor.load_sections(paper_params)
    models = doctor.hub_models(s)
    datasets = doctor.hub_datasets(s)
    assert {m[1] for m in models} >= {"FacebookAI/xlm-roberta-base",
                                      "google-bert/bert-base-multilingual-cased",
                                      "intfloat/multilingual-e5-base",
                                      "facebook/nllb-200-distilled-600M"}
    assert {d[1] for d in datasets} >= {"sentence-transformers/parallel-sentences-talks",
                                        "facebook/xnli", "mteb/tatoeba-bitext-mining"}
    for what, hub_id, revision in models:
        (line,) = [x for x in lines if f"{what} ({hub_id}" in x]
        assert line.startswith("hub: ") and "HF_HUB_OFFLINE=1" in line
        if revision:  # a pinned model's fix fetches the pin, not main again
            assert f"`hf download {hub_id} --revision {revision}`" in line
    for what, hub_id, _ in datasets:
        assert len([x for x in lines if f"{what} (dataset {hub_id}" in x]) == 1
    # No GPU here, and the paper profile trains and translates on one.
    gpu = [x for x in lines if x.startswith("gpu: ")]
    assert gpu[0].startswith("gpu: torch sees 0 GPU(s), the params need 1")
    assert gpu[1].startswith("gpu: CTranslate2 sees no GPU")
    assert len(lines) == len(gpu) + len(models) + len(datasets) + 1


def test_paper_profile_is_gpu_sane(paper_params):
    s = doctor.load_sections(paper_params)
    t = s.train_encoder
    assert doctor.check_config(s) == []  # no checkpointing under a cached loss; dev >= a batch
    assert all(t.loss[r].startswith("cached_") for r in t.regimes)  # En-X too
    assert not t.gradient_checkpointing and t.dev_rows >= t.batch_size * max(t.gpus, 1)
    assert 1 <= t.save_total_limit <= 3 and t.max_steps // t.save_steps <= 10  # bounded disk
    assert 100 <= t.max_steps // t.logging_steps <= 1000  # a curve, not one point per step
    assert len(t.seeds) >= 3 and t.gpus >= 1
    report = yaml.safe_load(paper_params.read_text())["report"]
    assert report["results_doc"] == "docs/paper.md"  # the default's docs/results.md stays


def test_wasteful_training_settings_are_reported(paper_params):
    params = yaml.safe_load(paper_params.read_text())
    params["train_encoder"].update(gradient_checkpointing=True, dev_rows=128)
    paper_params.write_text(yaml.safe_dump(params))
    lines = doctor.check_config(doctor.load_sections(paper_params))
    assert [line.split(" ", 2)[1] for line in lines] == ["gradient_checkpointing", "the"]
    assert "cached_bilingual_infonce, cached_multiway_infonce runs three forward" in lines[0]
    assert "the dev loss needs 512 rows (batch_size 512 x 1 process(es)), but dev_rows is 128" \
        in lines[1]


def fake_ct2(devices: int, types_: set[str]):
    return types.SimpleNamespace(get_cuda_device_count=lambda: devices,
                                 get_supported_compute_types=lambda device: types_)


@pytest.mark.parametrize(("ct2", "cublas", "expected"), [
    (fake_ct2(1, {"float32", "bfloat16", "float16"}), None, []),
    (fake_ct2(0, set()), None, ["gpu: CTranslate2 sees no GPU"]),
    (fake_ct2(1, {"float32"}), "libcublas.so.12: cannot open shared object file",
     ["gpu: CTranslate2 needs cuBLAS 12, which does not load (libcublas.so.12: cannot open"]),
    (fake_ct2(1, {"float32", "int8"}), None, ["gpu: CTranslate2 offers float32, int8 on this GPU"]),
])
def test_gpu_checks(paper_params, monkeypatch, ct2, cublas, expected):
    import torch

    import pipeline.translate.cuda as cuda

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(cuda, "import_ctranslate2", lambda: ct2)
    monkeypatch.setattr(cuda, "load_cublas12", lambda: cublas)
    problems = doctor.check_gpus(doctor.load_sections(paper_params))
    assert len(problems) == len(expected)
    for line, start in zip(problems, expected):
        assert line.startswith(start)


def test_two_gpus_asked_for_one_seen(paper_params, monkeypatch):
    import torch

    params = yaml.safe_load(paper_params.read_text())
    params["train_encoder"]["gpus"] = 2
    params["langs"]["pool"] = []  # nothing to translate: CTranslate2 is not asked
    paper_params.write_text(yaml.safe_dump(params))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    (line,) = doctor.check_gpus(doctor.load_sections(paper_params))
    assert line.startswith("gpu: torch sees 1 GPU(s), the params need 2 (train_encoder.gpus)")


def test_disk_check_counts_checkpoints_and_models(monkeypatch):
    s = doctor.load_sections(ROOT / "params.yaml")
    usage = types.SimpleNamespace(total=0, used=0, free=int(1e9))
    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda path: usage)
    (line,) = doctor.check_disk(s)
    assert line.startswith("disk: 1.0 GB free here, the params need about 5.0 GB (6 trained")
    usage.free = int(6e9)
    assert doctor.check_disk(s) == []
