"""A chain of real stages run twice gives byte-identical outputs and tracked metrics.

prepare_source → translate@deu_Latn, translate@fra_Latn (the tiny Marian fixture) →
build_corpus → report, through :func:`pipeline.cli.execute` as DVC runs them, in two
separate project directories with the same params. Everything under ``data/`` must match
byte for byte, except ``data/runtime/`` (times, memory, machine, date: untracked), which
must exist for every stage that returns metrics.
"""

from pathlib import Path

import pytest
import yaml

from pipeline.cli import execute
from tests.fixtures.nmt import SENTENCES

POOL = ["deu_Latn", "fra_Latn"]
CHAIN = [("prepare_source", {}), *[("translate", {"lang": lang}) for lang in POOL],
         ("build_corpus", {}), ("report", {})]


def params(model_dir: Path) -> dict:
    """Tiny, permissive settings: the random model's gibberish must survive the filters."""
    return {
        "langs": {"source": "eng_Latn", "pool": POOL},
        "prepare_source": {"input": "english.txt", "dependency": "english.txt"},
        "translate": {"model_dir": str(model_dir), "device": "cpu", "beam_size": 2,
                      "max_batch_tokens": 128, "max_decoding_length": 24, "intra_threads": 1,
                      "shard_size": 8, "references": None},
        "build_corpus": {"references": None, "second_editions": None, "min_length_ratio": 0.0,
                         "max_length_ratio": 100.0, "max_copy_ratio": 1.0, "max_repeat": 100,
                         "min_script_fraction": 0.0, "language_id": "none",
                         "dev_fraction": 0.2},
        "report": {"base": "none", "aligned": {"multiway": ["none-multiway"]},
                   "families": {"BibleTestBitextMining": "Bitext mining"}, "threads": 1,
                   "device": "cpu"},
    }


def run_chain(root: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """Run :data:`CHAIN` in ``root``; every file under ``root/data`` by relative path."""
    root.mkdir()
    monkeypatch.chdir(root)
    (root / "english.txt").write_text(
        "".join(f"{SENTENCES[i % 8]} ({i})\n" for i in range(30)), encoding="utf-8")
    (root / "params.yaml").write_text(yaml.safe_dump(params(model_dir)))
    for name, matrix in CHAIN:
        execute(name, "params.yaml", matrix=matrix)
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted((root / "data").rglob("*")) if p.is_file()}


def test_two_runs_of_a_stage_chain_write_the_same_bytes(nmt_models, tmp_path, monkeypatch):
    first = run_chain(tmp_path / "a", nmt_models["marian"], monkeypatch)
    second = run_chain(tmp_path / "b", nmt_models["marian"], monkeypatch)

    runtime = sorted(p for p in first if p.startswith("data/runtime/"))
    assert runtime == sorted(p for p in second if p.startswith("data/runtime/")) == [
        "data/runtime/build_corpus.json", "data/runtime/prepare_source.json",
        "data/runtime/translate@deu_Latn.json", "data/runtime/translate@fra_Latn.json"]
    tracked = {p for p in first if not p.startswith("data/runtime/")}
    assert tracked == {p for p in second if not p.startswith("data/runtime/")}
    assert {"data/metrics/translate@deu_Latn.json", "data/translated/fra_Latn.parquet",
            "data/corpus/multiway.parquet", "data/corpus/meta.json",
            "data/report/report.md"} <= tracked
    assert sorted(p for p in tracked if first[p] != second[p]) == []
