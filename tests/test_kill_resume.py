"""kill -9 at a random point, then a rerun: the stage ends as if it had never been killed.

translate, train_encoder and train_drmim run as DVC runs them (``python stages/<name>.py``)
in a subprocess on tiny inputs. Once a stage has produced work (a shard, a checkpoint, a
finished run) it gets SIGKILL after a seeded random delay, and is run again to completion.
The rerun prints no traceback, leaves no temp file, and writes the outputs of an
uninterrupted run (byte-identical files, tensor-identical weights). State made with another
config is discarded on a rerun, never resumed.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from pipeline.config import to_dict
from tests.test_downstream import LANGS as DOWNSTREAM_LANGS
from tests.test_downstream import tiny_cfg, world  # noqa: F401 (world: a fixture)
from tests.test_train import Killed, kill_after_save, load_cfg, trained, workspace  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]


def stage_env(**extra: str) -> dict[str, str]:
    """The environment of a stage subprocess: this checkout, one thread."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


def stage_cmd(name: str, params: Path, *args: str) -> list[str]:
    """The command line DVC runs for stage ``name`` (with this interpreter)."""
    return [sys.executable, str(ROOT / "stages" / f"{name}.py"), "--params", str(params), *args]


def kill_when(cmd: list[str], cwd: Path, env: dict[str, str], ready: Callable[[], bool],
              seed: int, max_delay: float) -> None:
    """Start ``cmd``; once ``ready()`` holds, wait a seeded random delay, then SIGKILL it."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not ready():
            assert proc.poll() is None, "the stage ended before it produced any work"
            assert time.monotonic() < deadline, "the stage produced no work in 120 s"
            time.sleep(0.002)
        time.sleep(random.Random(seed).uniform(0, max_delay))
    finally:
        proc.kill()  # SIGKILL; nothing happens if it has already ended
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the stage ended before it was killed"


def rerun(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    """Run ``cmd`` to completion: exit 0, no traceback. Returns its stderr."""
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    return done.stderr


def assert_no_temp_files(root: Path) -> None:
    """No ``*.tmp`` file or directory anywhere under ``root``."""
    assert not list(root.rglob("*.tmp")), list(root.rglob("*.tmp"))


def write_params(path: Path, **sections: dict) -> Path:
    """A params file holding ``sections``."""
    path.write_text(yaml.safe_dump(sections))
    return path


def test_translate_resumes_after_sigkill(nmt_models, tmp_path):
    from tests.test_translate import kill_and_resume

    kill_and_resume(nmt_models, tmp_path, seed=3)


def test_train_encoder_resumes_after_sigkill(workspace, trained, tmp_path):  # noqa: F811
    from safetensors.torch import load_file

    params = yaml.safe_load(workspace["params"].read_text())
    params["train_encoder"].update(output_dir=str(tmp_path / "models"),
                                   plots_dir=str(tmp_path / "plots"),
                                   work_dir=str(tmp_path / "work"))
    cmd = stage_cmd("train_encoder", write_params(tmp_path / "params.yaml", **params),
                    "--encoder", "tiny", "--regime", "multiway", "--seed", "7")
    first = tmp_path / "work" / "tiny-multiway-7" / "checkpoint-4" / "COMPLETE"
    kill_when(cmd, tmp_path, stage_env(), first.is_file, seed=1, max_delay=0.15)
    assert not (tmp_path / "models" / "tiny-multiway-7").exists()

    log = rerun(cmd, tmp_path, stage_env())
    assert "resuming from" in log and "discarding stale" not in log
    out, reference = tmp_path / "models" / "tiny-multiway-7", trained["out"]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.iterdir())
    weights, expected = load_file(out / "model.safetensors"), load_file(
        reference / "model.safetensors")
    assert weights.keys() == expected.keys()
    for name, tensor in weights.items():
        assert tensor.equal(expected[name]), name
    def files(log):  # the DVCLive log, byte for byte
        return {p.relative_to(log): p.read_bytes() for p in log.rglob("*") if p.is_file()}

    assert files(tmp_path / "plots" / "tiny-multiway-7") == files(
        workspace["root"] / "plots" / "tiny-multiway-7")
    assert_no_temp_files(tmp_path)


def test_config_change_discards_the_checkpoints(workspace, tmp_path, caplog):  # noqa: F811
    from pipeline.train.train_encoder import run

    dirs = {"output_dir": str(tmp_path / "models"), "plots_dir": str(tmp_path / "plots"),
            "work_dir": str(tmp_path / "work")}
    cfg, langs = load_cfg(workspace, max_steps=8, **dirs)
    with pytest.raises(Killed):
        run(cfg, langs, "tiny", "multiway", 7, callbacks=[kill_after_save(4)])
    assert (tmp_path / "work" / "tiny-multiway-7" / "checkpoint-4" / "COMPLETE").is_file()

    changed, _ = load_cfg(workspace, max_steps=8, learning_rate=1e-3, **dirs)
    with caplog.at_level(logging.INFO):
        run(changed, langs, "tiny", "multiway", 7)
    messages = [r.getMessage() for r in caplog.records if r.name == "pipeline.runtime"
                or "resuming" in r.getMessage()]
    assert messages == [f"discarding stale checkpoints in {tmp_path / 'work' / 'tiny-multiway-7'}"
                        ": fingerprint changed (config)"]


def test_train_drmim_resumes_after_sigkill(world, tmp_path):  # noqa: F811
    from pipeline.downstream import train_drmim

    def cfg(out: Path):
        return tiny_cfg(world, methods=("finetune", "drmim"), seeds=(0, 1), epochs=4,
                        output_dir=str(out / "runs"), work_dir=str(out / "work"),
                        catalogue=str(ROOT / "configs" / "encoders.yaml"))

    params = write_params(tmp_path / "params.yaml", langs=to_dict(DOWNSTREAM_LANGS),
                          train_drmim=to_dict(cfg(tmp_path)))
    cmd = stage_cmd("train_drmim", params, "--task", "bible_genre", "--encoder", "tiny-encoder")
    work = tmp_path / "work" / "bible_genre" / "tiny-encoder"
    kill_when(cmd, tmp_path, stage_env(), lambda: any(work.glob("*-seed*.json")), seed=2,
              max_delay=0.1)
    done = sorted(p.name for p in work.glob("*-seed*.json"))
    assert 1 <= len(done) < 4

    log = rerun(cmd, tmp_path, stage_env())
    assert f"resuming: {len(done)} of 4 runs already done" in log
    train_drmim.run(cfg(tmp_path / "reference"), DOWNSTREAM_LANGS, "bible_genre", "tiny-encoder")
    out = tmp_path / "runs" / "bible_genre" / "tiny-encoder"
    reference = tmp_path / "reference" / "runs" / "bible_genre" / "tiny-encoder"
    for name in ("predictions.parquet", "features.parquet", "runs.json"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert json.loads((out / "runs.json").read_text())[0]["variant"] == "finetune"
    assert not work.exists()
    assert_no_temp_files(tmp_path)
