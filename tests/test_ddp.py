"""train_encoder under DDP on CPU: two gloo processes launched by the stage's own ``gpus`` key.

The paper profile trains with one process per GPU; this runs the same launch (the stage calls
torchrun itself) on two CPU processes of the tiny encoder of tests/test_train.py, with the
cached multi-way loss gathering in-batch negatives across the processes. A step of the two
processes (4 rows each) must give the loss, the dev loss and the weights of one process
taking the same 8 rows at once: the gathered negatives, the averaged gradients and the
batch sharding together reproduce the single-process run. Dropout is off in this copy of the
model so the two runs draw no different random masks.
"""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import yaml
from sentence_transformers import SentenceTransformer

from pipeline.io import read_json
from pipeline.live import read_log
from tests.test_train import PROBE, workspace  # noqa: F401  (the module fixture)


@pytest.fixture(scope="module")
def runs(workspace, tmp_path_factory):  # noqa: F811
    from stages import train_encoder

    root = tmp_path_factory.mktemp("ddp")
    model_dir = root / "tiny-bert-nodrop"
    shutil.copytree(workspace["model_dir"], model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (model_dir / "config.json").write_text(json.dumps(config))
    params = yaml.safe_load(workspace["params"].read_text())
    catalogue = yaml.safe_load(open(params["train_encoder"]["catalogue"]))
    catalogue["tiny"]["source"] = str(model_dir)
    (root / "encoders.yaml").write_text(yaml.safe_dump(catalogue))

    out = {}
    for label, gpus, batch in (("ddp", 2, 4), ("single", 0, 8)):
        run_root = root / label
        section = {
            **params["train_encoder"], "catalogue": str(root / "encoders.yaml"),
            "loss": {"multiway": "cached_multiway_infonce"},
            "loss_params": {"cached_multiway_infonce": {"temperature": 0.1,
                                                        "mini_batch_size": 3}},
            "gpus": gpus, "batch_size": batch, "max_steps": 2, "logging_steps": 1,
            "save_steps": 2, "dev_rows": 16, "output_dir": str(run_root / "models"),
            "plots_dir": str(run_root / "plots"), "work_dir": str(run_root / "work"),
        }
        run_root.mkdir()
        (run_root / "params.yaml").write_text(yaml.safe_dump({**params, "train_encoder": section}))
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(run_root)
            mp.setenv("OMP_NUM_THREADS", "1")
            rc = train_encoder.main(["--params", str(run_root / "params.yaml"), "--encoder",
                                     "tiny", "--regime", "multiway", "--seed", "7"])
        assert rc == 0, label
        out[label] = {
            "metrics": read_json(run_root / "data/metrics/train_encoder@tiny-multiway-7.json"),
            "curve": read_log(run_root / "plots" / "tiny-multiway-7"),
            "meta": read_json(run_root / "models" / "tiny-multiway-7" / "meta.json"),
            "embeddings": SentenceTransformer(str(run_root / "models" / "tiny-multiway-7"))
            .encode(PROBE, convert_to_numpy=True),
        }
    return out


def test_two_processes_train_with_gathered_negatives(runs):
    ddp = runs["ddp"]
    assert ddp["meta"]["world_size"] == 2
    assert ddp["meta"]["loss"]["config"]["gather_across_devices"] is True
    assert runs["single"]["meta"]["loss"]["config"]["gather_across_devices"] is False
    assert ddp["metrics"]["steps"] == 2 and ddp["metrics"]["rows_trained"] == 16
    # The pooler is frozen: no trainable parameter is left without a gradient under DDP.
    assert ddp["metrics"]["trainable_params"] == runs["single"]["metrics"]["trainable_params"]


def test_ddp_matches_the_single_process_run_on_the_same_global_batch(runs):
    ddp, single = runs["ddp"], runs["single"]
    assert list(ddp["curve"]["step"]) == list(single["curve"]["step"]) == [1, 2]
    pd.testing.assert_series_equal(ddp["curve"]["loss"], single["curve"]["loss"], rtol=1e-4)
    for key in ("dev_loss_start", "dev_loss_end"):
        assert ddp["metrics"][key] == pytest.approx(single["metrics"][key], rel=1e-4), key
    assert ddp["embeddings"] == pytest.approx(single["embeddings"], abs=1e-4)
