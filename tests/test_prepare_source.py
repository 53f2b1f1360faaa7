import dataclasses
import json
import unicodedata

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.config import LangsConfig
from pipeline.sources import prepare_source
from pipeline.sources.prepare_source import DROP_REASONS, PrepareSourceConfig, run
from pipeline.sources.text import clean_line

LANGS = LangsConfig()
LONG = "x" * 100_000

# A .txt input with one of every kind of bad line; each comment names the expected outcome.
TXT_LINES = [
    b"In the beginning was the Word.",  # 0 kept
    b"  Tabs\tand   spaces\r",  # 1 kept as "Tabs and spaces" (CRLF too)
    b"caf\xe9 latin-1 byte",  # 2 invalid_utf8
    b"NUL\x00 inside",  # 3 kept as "NUL inside" (control char stripped)
    b"",  # 4 empty
    b"   \t ",  # 5 empty
    LONG.encode(),  # 6 too_long
    b"hi",  # 7 too_short
    b"In the beginning was the Word.",  # 8 duplicate of 0
    "\ufb01ne \u00a0 ligature \uff21".encode(),  # 9 kept as NFKC "fine ligature A"
    b"In  the beginning was the Word. ",  # 10 duplicate once whitespace is collapsed
    b"\x00\x01",  # 11 empty after stripping controls
    b"last line without newline",  # 12 kept
]


def metrics_for(read, kept, control=0, **dropped):
    return {"lines_read": read, "lines_kept": kept,
            **{f"dropped_{r}": dropped.get(r, 0) for r in DROP_REASONS},
            "dropped_total": sum(dropped.values()), "control_chars_stripped": control}


def check_metrics(got, want, texts):
    assert got["chars_mean"] == round(sum(map(len, texts)) / len(texts), 2)
    assert got["chars_max"] == max(map(len, texts))
    assert {k: v for k, v in got.items() if not k.startswith("chars_")} == want


@pytest.fixture
def txt(tmp_path):
    path = tmp_path / "src.txt"
    path.write_bytes(b"\n".join(TXT_LINES))
    return path


def cfg_for(tmp_path, **kw):
    kw.setdefault("dependency", kw.get("input", PrepareSourceConfig.dependency))
    # The inputs here are bad lines on purpose; the limit on them: test_bad_inputs.py.
    kw.setdefault("max_bad_fraction", 1.0)
    kw.setdefault("sample_fraction", 1.0)
    return PrepareSourceConfig(output=str(tmp_path / "out" / "eng.parquet"), **kw)


def test_clean_line():
    assert clean_line("a\x00b\u00a0 c\ufeff\x1b[0m", "NFKC") == ("ab c[0m", True)
    assert clean_line("\ufb01\u2028x", "NFC") == ("\ufb01 x", False)
    assert clean_line("\ufb01\u2028x", "NFKC") == ("fi x", False)


def test_txt_every_bad_line_is_counted(txt, tmp_path):
    cfg = cfg_for(tmp_path, input=str(txt))
    metrics = run(cfg, LANGS)
    got = pd.read_parquet(cfg.output)
    assert got.columns.tolist() == ["id", "eng_Latn"]
    texts = ["In the beginning was the Word.", "Tabs and spaces", "NUL inside",
             "fine ligature A", "last line without newline"]
    assert got.id.tolist() == ["0", "1", "3", "9", "12"]  # index in the input, not renumbered
    assert got.eng_Latn.tolist() == texts
    assert pq.read_schema(cfg.output).types == [pa.string(), pa.string()]
    check_metrics(metrics, metrics_for(13, 5, control=2, invalid_utf8=1, empty=3, too_long=1,
                                       too_short=1, duplicate=2), texts)


def test_normal_form_and_bounds_are_configurable(txt, tmp_path):
    cfg = cfg_for(tmp_path, input=str(txt), normalization="NFC", min_chars=0,
                  max_chars=200_000)
    run(cfg, LANGS)
    got = pd.read_parquet(cfg.output).set_index("id").eng_Latn
    assert got["7"] == "hi" and got["6"] == LONG
    assert got["9"] == unicodedata.normalize("NFC", "\ufb01ne ligature \uff21")


def test_limit_keeps_first_lines_with_their_ids(txt, tmp_path):
    cfg = cfg_for(tmp_path, input=str(txt), limit=3)
    metrics = run(cfg, LANGS)
    assert pd.read_parquet(cfg.output).id.tolist() == ["0", "1", "3"]
    assert metrics["lines_read"] == 4 and metrics["lines_kept"] == 3


def test_a_sample_is_fixed_by_the_ids_and_nested_across_fractions(tmp_path):
    from pipeline.runtime import unit_hash

    path = tmp_path / "many.txt"
    path.write_text("".join(f"line number {i}\n" for i in range(400)))
    kept = {}
    for fraction in (0.25, 0.5, 1.0):
        cfg = dataclasses.replace(
            cfg_for(tmp_path, input=str(path), sample_fraction=fraction, sample_seed=7),
            output=str(tmp_path / f"{fraction}.parquet"))
        metrics = run(cfg, LANGS)
        kept[fraction] = pd.read_parquet(cfg.output).id.tolist()
        # The rows whose id hashes below the fraction, in input order; the rest are counted.
        assert kept[fraction] == [str(i) for i in range(400) if unit_hash(7, str(i)) < fraction]
        assert metrics["lines_kept"] == len(kept[fraction])
        assert metrics["dropped_not_sampled"] == metrics["dropped_total"] == 400 - len(
            kept[fraction])
    assert 60 < len(kept[0.25]) < 140 and len(kept[1.0]) == 400
    assert set(kept[0.25]) < set(kept[0.5]) < set(kept[1.0])
    other = cfg_for(tmp_path, input=str(path), sample_fraction=0.25, sample_seed=8)
    run(other, LANGS)
    assert pd.read_parquet(other.output).id.tolist() != kept[0.25]


def test_small_batches_give_the_same_table(txt, tmp_path, monkeypatch):
    whole = cfg_for(tmp_path, input=str(txt))
    run(whole, LANGS)
    monkeypatch.setattr(prepare_source, "_BATCH_ROWS", 2)
    batched = PrepareSourceConfig(input=str(txt), output=str(tmp_path / "batched.parquet"),
                                  sample_fraction=1.0,
                                  dependency=str(txt), max_bad_fraction=1.0)
    run(batched, LANGS)
    assert pq.ParquetFile(batched.output).metadata.num_row_groups > 1
    pd.testing.assert_frame_equal(pd.read_parquet(batched.output),
                                  pd.read_parquet(whole.output))


def test_jsonl_ids_and_bad_records(tmp_path):
    path = tmp_path / "src.jsonl"
    lines = [
        json.dumps({"id": "a", "text": "First sentence here."}),
        "{not json",
        json.dumps(["a", "list"]),
        json.dumps({"id": 7, "text": None}),
        json.dumps({"id": 8}),
        json.dumps({"id": 9, "text": 42}),
        "",
        '{"id": "s", "text": "lone \\ud800 surrogate"}',
        json.dumps({"id": "b", "text": "Second\u00a0sentence."}),
    ]
    path.write_bytes("\n".join(lines).encode() + b"\n\xff\xfe{}\n")
    cfg = cfg_for(tmp_path, input=str(path), column="text", id_column="id")
    metrics = run(cfg, LANGS)
    got = pd.read_parquet(cfg.output)
    assert got.to_dict("list") == {"id": ["a", "b"],
                                   "eng_Latn": ["First sentence here.", "Second sentence."]}
    check_metrics(metrics, metrics_for(10, 2, invalid_json=2, missing_text=2, not_text=1,
                                       empty=1, invalid_utf8=2),
                  ["First sentence here.", "Second sentence."])


def test_jsonl_without_ids_uses_line_numbers(tmp_path):
    path = tmp_path / "src.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in ["Alpha one.", "", "Beta two."]))
    cfg = cfg_for(tmp_path, input=str(path), column="text", id_column="id")
    run(cfg, LANGS)
    assert pd.read_parquet(cfg.output).id.tolist() == ["0", "2"]


def test_jsonl_errors(tmp_path):
    path = tmp_path / "src.jsonl"
    path.write_text(json.dumps({"sentence": "Alpha one."}) + "\n")
    cfg = cfg_for(tmp_path, input=str(path), column="text")
    with pytest.raises(ValueError, match=r"no record has the field 'text' \(the first has "
                                         r"\['sentence'\]\); set prepare_source.column"):
        run(cfg, LANGS)
    path.write_text(json.dumps({"id": 1, "text": "Alpha one."}) + "\n"
                    + json.dumps({"text": "Beta two."}) + "\n")
    with pytest.raises(ValueError, match=r"src.jsonl:2: record has no 'id' value"):
        run(cfg_for(tmp_path, input=str(path), column="text"), LANGS)
    assert not (tmp_path / "out" / "eng.parquet").exists()


def test_duplicate_ids_fail_and_leave_the_old_output(tmp_path):
    out = tmp_path / "out" / "eng.parquet"
    out.parent.mkdir()
    out.write_bytes(b"previous")
    path = tmp_path / "src.parquet"
    pq.write_table(pa.table({"id": ["0", "5", "0"], "eng_Latn": ["One.", "Two.", "Three."]}),
                   path)
    with pytest.raises(ValueError, match="duplicate id '0' in column 'id' of .*set id_column"):
        run(cfg_for(tmp_path, input=str(path)), LANGS)
    assert out.read_bytes() == b"previous"
    assert [p.name for p in out.parent.iterdir()] == ["eng.parquet"]  # no temp file left


def test_parquet_ids_nulls_and_columns(tmp_path):
    path = tmp_path / "src.parquet"
    pq.write_table(pa.table({"id": [10, 11, 12], "eng_Latn": ["One two.", None, "Three."],
                             "n": [1, 2, 3]}), path)
    cfg = cfg_for(tmp_path, input=str(path))
    metrics = run(cfg, LANGS)
    assert pd.read_parquet(cfg.output).to_dict("list") == {
        "id": ["10", "12"], "eng_Latn": ["One two.", "Three."]}
    assert metrics["dropped_missing_text"] == 1
    run(cfg_for(tmp_path, input=str(path), id_column=None), LANGS)
    assert pd.read_parquet(cfg.output).id.tolist() == ["0", "2"]
    run(cfg_for(tmp_path, input=str(path), id_column="doc_id"), LANGS)  # absent: row numbers
    assert pd.read_parquet(cfg.output).id.tolist() == ["0", "2"]
    with pytest.raises(ValueError, match=r"has no column 'text'; it has \['id', 'eng_Latn', "
                                         r"'n'\]; set prepare_source.column"):
        run(cfg_for(tmp_path, input=str(path), column="text"), LANGS)
    with pytest.raises(ValueError, match="column 'n' holds int64, not text"):
        run(cfg_for(tmp_path, input=str(path), column="n"), LANGS)


@pytest.mark.parametrize("name, content, fmt, exc, match", [
    ("missing.txt", None, "auto", FileNotFoundError,
     "input file not found: .*missing.txt; fix prepare_source.input"),
    ("src.csv", b"a\n", "auto", ValueError,
     "cannot tell the format of .*src.csv from its suffix '.csv'"),
    ("bad.parquet", b"not parquet", "auto", ValueError, "is not a readable Parquet file"),
    ("u16.txt", "Hello there\n".encode("utf-16"), "auto", ValueError,
     "is UTF-16 .*convert it to UTF-8"),
    ("empty.txt", b"", "auto", ValueError, r"no line of .*empty.txt was kept \(0 read"),
    ("short.txt", b"a\nb\n\n", "txt", ValueError,
     r"was kept \(3 read, dropped: \{'empty': 1, 'too_short': 2\}\)"),
])
def test_bad_inputs(tmp_path, name, content, fmt, exc, match):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(exc, match=match):
        run(cfg_for(tmp_path, input=str(path), format=fmt), LANGS)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_directory_input_and_bad_bounds(tmp_path, txt):
    with pytest.raises(ValueError, match="is a directory; .*set format: hf"):
        run(cfg_for(tmp_path, input=str(tmp_path)), LANGS)
    for kw, match in [({"min_chars": -1}, "min_chars must be >= 0, got -1"),
                      ({"max_chars": 2}, r"max_chars \(2\) must be >= 1 and >= min_chars \(3\)"),
                      ({"limit": 0}, "limit must be a positive number of lines or null"),
                      ({"sample_fraction": 0.0}, r"sample_fraction must be in \(0, 1\]"),
                      ({"sample_fraction": 1.5}, r"sample_fraction must be in \(0, 1\]")]:
        with pytest.raises(ValueError, match=match):
            run(cfg_for(tmp_path, input=str(txt), **kw), LANGS)
    with pytest.raises(ValueError, match="unknown language code 'english'"):
        run(cfg_for(tmp_path, input=str(txt)), LangsConfig(source="english"))


@pytest.fixture(scope="module")
def hf_data(tmp_path_factory):
    import datasets

    root = tmp_path_factory.mktemp("hf")
    files = root / "files"
    files.mkdir()
    rows = [{"uid": "u1", "text": "Alpha one."}, {"uid": "u2", "text": "Beta two."},
            {"uid": "u3", "text": "Alpha one."}]
    (files / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    datasets.Dataset.from_list(rows).save_to_disk(str(root / "saved"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:1])}).save_to_disk(
        str(root / "saved_dict"))
    return root


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    import datasets

    # Keep load_dataset's Arrow cache out of the user's ~/.cache.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


@pytest.mark.parametrize("sub, ids", [("files", ["u1", "u2"]), ("saved", ["u1", "u2"]),
                                      ("saved_dict", ["u1"])])
def test_hf_local_directories(hf_data, hf_cache, tmp_path, sub, ids):
    cfg = cfg_for(tmp_path, input=str(hf_data / sub), format="hf", column="text",
                  id_column="uid")
    metrics = run(cfg, LANGS)
    assert pd.read_parquet(cfg.output).id.tolist() == ids
    assert metrics["dropped_duplicate"] == (1 if len(ids) == 2 else 0)


def test_hf_failures_are_one_line(hf_data, hf_cache, tmp_path):
    cfg = cfg_for(tmp_path, input="nobody/no-such-dataset", format="hf", column="text")
    with pytest.raises(ValueError, match=r"could not load Hugging Face dataset "
                                         r"'nobody/no-such-dataset' .*pass a local file") as e:
        run(cfg, LANGS)
    assert "\n" not in str(e.value)
    cfg = cfg_for(tmp_path, input=str(hf_data / "files"), format="hf", column="text",
                  hf_split="test")
    with pytest.raises(ValueError, match=r"could not load .*Unknown split \"test\""):
        run(cfg, LANGS)
    cfg = cfg_for(tmp_path, input=str(hf_data / "saved_dict"), format="hf", hf_split="dev")
    with pytest.raises(ValueError, match=r"Unknown split \"dev\"; it has \['train'\]"):
        run(cfg, LANGS)
    cfg = cfg_for(tmp_path, input=str(hf_data / "saved"), format="hf", column="sentence")
    with pytest.raises(ValueError, match=r"has no column 'sentence'; it has \['uid', 'text'\]"):
        run(cfg, LANGS)


def test_stage_entry_writes_output_and_metrics(txt, tmp_path, monkeypatch, capsys):
    from stages.prepare_source import main

    monkeypatch.chdir(tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "langs": {"source": "eng_Latn", "pool": ["deu_Latn"]},
        "prepare_source": {"input": str(txt), "dependency": str(txt), "max_bad_fraction": 0.1,
                           "output": "data/source/eng_Latn.parquet", "sample_fraction": 1.0},
    }))
    assert main(["--params", str(params)]) == 0
    metrics = json.loads((tmp_path / "data/metrics/prepare_source.json").read_text())
    assert metrics["lines_kept"] == len(pd.read_parquet("data/source/eng_Latn.parquet")) == 5
    params.write_text(yaml.safe_dump({"prepare_source": {"input": "nope.txt"}}))
    assert main(["--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert "error: input file not found: nope.txt" in err and "Traceback" not in err


def test_a_local_input_must_be_the_dvc_dependency(txt, tmp_path):
    with pytest.raises(ValueError, match=f"set dependency: {txt}"):
        run(cfg_for(tmp_path, input=str(txt), dependency="data/seed/bible_source.parquet"), LANGS)
    assert not (tmp_path / "out" / "eng.parquet").exists()
