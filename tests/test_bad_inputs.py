"""Bad input fails loudly: exit status 2, one ``error:`` line naming the file, no traceback.

Each case runs through a real entry point (``multiway`` or ``stages/<name>.py``).
"""

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline import cli
from pipeline.config import load_params
from pipeline.corpus.build_corpus import BuildCorpusConfig
from pipeline.io import write_json

ROOT = Path(__file__).resolve().parents[1]
NMT_MODEL = ROOT / "data/models/nmt/bible-marian"


def one_error(status: int, capsys) -> str:
    """Check a failed run's exit status and stderr; return its one ``error:`` line."""
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    return errors[0]


def write_params(path: Path, params: dict) -> Path:
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------- params file


def test_a_misspelled_section_fails_with_did_you_mean(tmp_path, capsys):
    params = write_params(tmp_path / "params.yaml",
                          {"langs": {"pool": ["deu_Latn"]}, "tranlsate": {"beam_size": 4}})
    status = cli.main(["translate", "--params", str(params), "--lang", "deu_Latn"])
    line = one_error(status, capsys)
    assert f"{params}: unknown section 'tranlsate' (did you mean 'translate'?)" in line


def test_the_repository_params_have_only_known_sections():
    load_params(ROOT / "params.yaml", [*cli.STAGES, *cli.SHARED])


def test_a_params_file_given_but_missing_fails(tmp_path, capsys):
    missing = tmp_path / "prams.yaml"
    line = one_error(cli.main(["build_corpus", "--params", str(missing)]), capsys)
    assert f"params file not found: {missing}" in line


def test_without_params_yaml_every_section_takes_its_defaults(tmp_path, monkeypatch):
    seen = {}

    def fake_run(cfg, langs):
        seen["cfg"] = cfg
        return {"ok": 1}

    monkeypatch.chdir(tmp_path)  # outside a project: no params.yaml here
    monkeypatch.setattr("pipeline.corpus.build_corpus.run", fake_run)
    assert cli.main(["build_corpus"]) == 0
    assert seen["cfg"] == BuildCorpusConfig()


# ---------------------------------------------------------------------------- prepare_source


def prepare_source(tmp_path: Path, lines: list[bytes], suffix: str = ".txt", **section):
    """Run stages/prepare_source.py on ``lines``; return its status and the input path."""
    from stages.prepare_source import main

    src = tmp_path / f"src{suffix}"
    src.write_bytes(b"\n".join(lines) + b"\n")
    params = write_params(tmp_path / "params.yaml", {"prepare_source": {
        "input": str(src), "dependency": str(src), "column": "text",
        "output": str(tmp_path / "out.parquet"), "sample_fraction": 1.0, **section}})
    return main(["--params", str(params)]), src


def sentences(n: int) -> list[bytes]:
    return [f"Sentence number {i} of the source.".encode() for i in range(n)]


def test_prepare_source_fails_past_max_bad_fraction(tmp_path, capsys):
    lines = sentences(200)
    for i in (40, 90, 150):
        lines[i] = b"caf\xe9 latin-1"
    status, src = prepare_source(tmp_path, lines)
    line = one_error(status, capsys)
    assert line.startswith(f"error: {src}: 3 of 200 lines are malformed (3 not UTF-8; the "
                           f"first is line 41), more than prepare_source.max_bad_fraction "
                           f"(0.01)")
    assert not (tmp_path / "out.parquet").exists()
    assert not list(tmp_path.glob(".*.tmp"))


def test_prepare_source_counts_malformed_lines_below_the_limit(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the metrics land in data/metrics here
    lines = sentences(200)
    lines[7] = b"\xff\xfe broken"
    status, _ = prepare_source(tmp_path, lines)
    assert status == 0
    metrics = json.loads((tmp_path / "data/metrics/prepare_source.json").read_text())
    assert metrics["dropped_invalid_utf8"] == 1 and metrics["lines_kept"] == 199


def test_prepare_source_fails_on_non_json_lines(tmp_path, capsys):
    lines = [json.dumps({"text": s.decode()}).encode() for s in sentences(20)]
    lines[4] = b"{truncated"
    status, src = prepare_source(tmp_path, lines, suffix=".jsonl", max_bad_fraction=0.02)
    line = one_error(status, capsys)
    assert f"{src}: 1 of 20 lines are malformed (1 not a JSON object; the first is line 5)" in line


# ---------------------------------------------------------------------------- mine, metrics


def test_mine_names_the_file_and_line_of_a_bad_byte(tmp_path, capsys):
    good, bad = tmp_path / "de.txt", tmp_path / "fr.txt"
    good.write_text("Hallo Welt\n", encoding="utf-8")
    bad.write_bytes(b"Bonjour\ncaf\xe9\n")
    # The files are checked before the encoder is loaded, so no model is needed.
    status = cli.main(["mine", "--source", str(good), "--target", str(bad),
                       "--model", "no-such-model", "--output", str(tmp_path / "p.parquet")])
    assert f"error: {bad}:2: not valid UTF-8" in one_error(status, capsys)


def test_nan_in_metrics_fails_instead_of_writing_invalid_json(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("pipeline.corpus.build_corpus.run", lambda cfg, langs: {"mean": math.nan})
    line = one_error(cli.main(["build_corpus"]), capsys)
    assert "cannot write data/metrics/build_corpus.json" in line
    assert not (tmp_path / "data").exists()  # neither the file nor a temp file


def test_write_json_refuses_infinity(tmp_path):
    with pytest.raises(ValueError, match="JSON has no NaN or infinity"):
        write_json({"x": [1.0, math.inf]}, tmp_path / "m.json")
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------- killed mid-write

# prepare_source, paused after 50 kept lines (two batches already in its temp file).
PAUSED_PREPARE = """
import sys, time
from pipeline.sources import prepare_source
prepare_source._BATCH_ROWS = 20
real = prepare_source._filter
def paused(text, cfg, seen):
    if len(seen) == 50:
        print("writing", flush=True)
        time.sleep(600)
    return real(text, cfg, seen)
prepare_source._filter = paused
from stages.prepare_source import main
sys.exit(main(["--params", "params.yaml"]))
"""


def test_a_writer_killed_by_sigkill_leaves_no_temp_file_after_the_rerun(tmp_path, monkeypatch):
    from stages.prepare_source import main

    monkeypatch.chdir(tmp_path)
    src = tmp_path / "src.txt"
    src.write_bytes(b"\n".join(sentences(300)) + b"\n")
    write_params(tmp_path / "params.yaml", {"prepare_source": {
        "input": str(src), "dependency": str(src), "output": "data/source/eng.parquet",
        "sample_fraction": 1.0}})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", PAUSED_PREPARE], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        out_dir = tmp_path / "data/source"
        [temp] = out_dir.glob(".*.tmp")
        assert temp.stat().st_size > 0
        write_json({"a": 1}, out_dir / "other.json")  # a live writer's temp file is kept
        assert temp.exists()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert temp.exists()  # kill -9 skips every clean-up
    assert main(["--params", "params.yaml"]) == 0  # the rerun removes it
    assert sorted(p.name for p in out_dir.iterdir()) == ["eng.parquet", "other.json"]
    kept = pd.read_parquet(out_dir / "eng.parquet")
    assert kept.eng_Latn.tolist() == [s.decode() for s in sentences(300)]


def test_a_temp_file_of_an_earlier_process_with_our_pid_is_stale(tmp_path):
    # Process ids repeat (a fresh container starts from the same ones).
    stale = tmp_path / f".m.json.{os.getpid()}.abcd1234.tmp"
    stale.write_text("half")
    write_json({"a": 1}, tmp_path / "m.json")
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


# ---------------------------------------------------------------------------------- translate


def test_a_corrupt_sentencepiece_model_names_the_file(tmp_path, capsys):
    model = tmp_path / "nmt"
    model.mkdir()
    for f in NMT_MODEL.iterdir():
        (model / f.name).symlink_to(f)
    (model / "source.spm").unlink()
    (model / "source.spm").write_bytes(b"not a sentencepiece model")
    source = tmp_path / "eng.parquet"
    pd.DataFrame({"id": ["0"], "eng_Latn": ["In the beginning."]}).to_parquet(source)
    params = write_params(tmp_path / "params.yaml", {"translate": {
        "source": str(source), "model_dir": str(model), "references": None,
        "output_dir": str(tmp_path / "out"), "device": "cpu"}})
    status = cli.main(["translate", "--params", str(params), "--lang", "deu_Latn"])
    line = one_error(status, capsys)
    assert f"error: {model / 'source.spm'} is not a valid sentencepiece model" in line
    assert "train_nmt" in line
