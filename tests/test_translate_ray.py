"""The ``ray`` backend of ``translate``: same shards and file as the local backend.

One local 2-CPU Ray instance serves the whole module (started once; in-process stage runs
reuse it, the stage subprocesses reach it through ``RAY_ADDRESS``).
"""

import dataclasses
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.io import read_table
from pipeline.translate import ray_backend, translate
from tests.fixtures.nmt import source_frame
from tests.test_translate import LANGS, fail_after, kill_and_resume, make_cfg

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_address():
    """A local Ray instance with 2 CPUs for the module; yields its address."""
    context = ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield context.address_info["gcs_address"]
    ray.shutdown()


@pytest.fixture(scope="module")
def mixed_source(tmp_path_factory) -> Path:
    """75 rows with empty ones, in row groups of 7 (no shard boundary is a group's)."""
    frame = source_frame(75)
    frame.loc[[3, 20, 21, 74], "eng_Latn"] = ["", "  ", "", ""]
    path = tmp_path_factory.mktemp("mixed") / "src.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, row_group_size=7)
    return path


def test_ray_output_is_the_local_output_byte_for_byte(ray_address, nmt_models, mixed_source,
                                                      tmp_path):
    local = make_cfg(tmp_path, nmt_models["marian"], mixed_source, shard_size=16,
                     output_dir=str(tmp_path / "local"))
    distributed = dataclasses.replace(local, backend="ray", ray_actors=2,
                                      output_dir=str(tmp_path / "ray"))
    expected = translate.run(local, LANGS, "deu_Latn")
    metrics = translate.run(distributed, LANGS, "deu_Latn")

    assert (tmp_path / "ray/deu_Latn.parquet").read_bytes() == \
        (tmp_path / "local/deu_Latn.parquet").read_bytes()
    assert not (tmp_path / "ray/deu_Latn.parts").exists()
    work = metrics.pop("runtime")
    assert metrics == {k: v for k, v in expected.items() if k != "runtime"}
    for key in ("translated_sentences", "target_tokens"):
        assert work[key] == expected["runtime"][key], key
    assert metrics["shards"] == 5 and work["ray_actors"] == 2
    assert work["translate_seconds"] > 0 and work["actor_seconds"] > 0
    out = read_table(tmp_path / "ray/deu_Latn.parquet")
    assert out.loc[[3, 20, 21, 74], "deu_Latn"].tolist() == ["", "", "", ""]


def test_shards_of_one_backend_are_resumed_by_the_other(ray_address, nmt_models, nmt_source,
                                                        tmp_path, monkeypatch):
    cfg = make_cfg(tmp_path, nmt_models["nllb"], nmt_source)
    reference = make_cfg(tmp_path, nmt_models["nllb"], nmt_source,
                         output_dir=str(tmp_path / "ref"))
    translate.run(reference, LANGS, "deu_Latn")
    with monkeypatch.context() as m:
        fail_after(m, 2)  # the local backend stops after 2 of 4 shards
        with pytest.raises(RuntimeError, match="injected failure"):
            translate.run(cfg, LANGS, "deu_Latn")
    work = translate.run(dataclasses.replace(cfg, backend="ray"), LANGS, "deu_Latn")["runtime"]
    assert work["shards_reused"] == 2 and work["translated_sentences"] == 60 - 32
    assert (tmp_path / "out/deu_Latn.parquet").read_bytes() == \
        (tmp_path / "ref/deu_Latn.parquet").read_bytes()



def test_ray_resume_after_sigkill(ray_address, nmt_models, tmp_path):
    """The local backend's kill test with the ray backend.

    Both runs reach the module's Ray instance through ``RAY_ADDRESS``; the killed driver's
    actors die with it.
    """
    kill_and_resume(nmt_models, tmp_path, {"RAY_ADDRESS": ray_address}, backend="ray",
                    ray_actors=2)


def test_bad_model_fails_before_ray_work(ray_address, nmt_models, nmt_source, tmp_path):
    model = tmp_path / "corrupt"
    model.mkdir()
    for path in nmt_models["marian"].iterdir():
        (model / path.name).write_bytes(path.read_bytes())
    (model / "model.bin").write_bytes(b"not a model")
    cfg = make_cfg(tmp_path, model, nmt_source, backend="ray")
    with pytest.raises(ValueError, match="CTranslate2 cannot load .* on cpu .*; if the model "
                                         "directory is incomplete .* reconvert it") as info:
        translate.run(cfg, LANGS, "deu_Latn")
    assert "\n" not in str(info.value) and not (tmp_path / "out").exists()


def test_actor_errors_come_back_as_the_same_one_line_error(nmt_models, nmt_source, tmp_path):
    job = ray_backend.ShardJob(
        source=str(nmt_source), source_column="eng_Latn", lang="deu_Latn", shard_size=16,
        model_dir=str(tmp_path / "not-on-this-node"), family="auto", device="cpu",
        compute_type="int8", beam_size=2, max_batch_tokens=128, max_decoding_length=24,
        no_repeat_ngram_size=0, inter_threads=1, intra_threads=1)
    row = ray_backend.ShardTranslator(job)(pa.table({"shard": [1]})).to_pylist()[0]
    assert row["shard"] == 1 and row["ids"] == [] and "Traceback" in row["trace"]
    with pytest.raises(FileNotFoundError, match="not-on-this-node does not exist") as info:
        ray_backend._raise_actor_error(row["shard"], row["error"], row["trace"])
    assert "\n" not in str(info.value)

    ok = ray_backend.ShardTranslator(dataclasses.replace(job, model_dir=str(nmt_models["marian"])))
    row = ok(pa.table({"shard": [3]})).to_pylist()[0]  # the last, short shard: rows 48-59
    assert row["error"] is None and row["tokens"] > 0
    assert row["ids"] == read_table(nmt_source)["id"].tolist()[48:60] and len(row["texts"]) == 12


class FakeRay:
    """Records ``init`` / ``shutdown`` (the real session is the module's)."""

    def __init__(self):
        self.calls = []
        self.data = object()

    def is_initialized(self):
        return False

    def init(self, **kwargs):
        self.calls.append(("init", kwargs))

    def shutdown(self):
        self.calls.append(("shutdown", {}))


def test_ray_session_starts_a_local_instance_or_joins_ray_address(monkeypatch):
    fake = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setitem(sys.modules, "ray.data", fake.data)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with ray_backend.ray_session(4) as session:
        assert session is fake and [c for c, _ in fake.calls] == ["init"]
    assert fake.calls == [("init", {"address": "local", "num_cpus": 4, "include_dashboard": False,
                                    "logging_level": 30}), ("shutdown", {})]

    fake.calls.clear()
    monkeypatch.setenv("RAY_ADDRESS", "head:6379")
    with ray_backend.ray_session(4):
        pass
    assert fake.calls == [("init", {"address": "head:6379", "logging_level": 30}),
                          ("shutdown", {})]
