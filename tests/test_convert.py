import json
import logging
import os
import re
import shutil

import ctranslate2
import pytest
import yaml
from ctranslate2.converters import TransformersConverter

from pipeline import config as c
from pipeline.translate import convert_nmt
from pipeline.translate.convert_nmt import ConvertNmtConfig
from pipeline.translate.families import META_FILE, read_vocabularies
from tests.fixtures.nmt import MARIAN_TARGETS, build_marian


def test_metadata_follows_the_contract(nmt_models):
    expected_files = {
        "marian": {"source.spm", "target.spm"},
        "m2m100": {"sentencepiece.bpe.model"},
        "nllb": {"tokenizer.json"},
    }
    for family, model_dir in nmt_models.items():
        meta = json.loads((model_dir / META_FILE).read_text())
        assert meta["family"] == family
        assert meta["source_lang"] == "eng_Latn"
        assert meta["max_positions"] == 64
        assert meta["quantization"] == "int8"
        assert expected_files[family] <= {p.name for p in model_dir.iterdir()}
        if family == "marian":
            assert meta["target_langs"] == list(MARIAN_TARGETS)
            assert meta["target_tag"] == ">>{code}<<"
            assert (meta["source_spm"], meta["target_spm"]) == ("source.spm", "target.spm")
        else:
            assert meta["target_langs"] is None and meta["target_tag"] is None


def test_conversion_is_cached_and_redone_when_quantization_changes(nmt_hf_models, tmp_path,
                                                                    caplog):
    out = tmp_path / "marian"
    convert_nmt.convert_hf_model(nmt_hf_models["marian"], out, quantization="int8")
    first = (out / "model.bin").stat()
    with caplog.at_level(logging.INFO, logger="pipeline.translate.convert_nmt"):
        convert_nmt.convert_hf_model(nmt_hf_models["marian"], out, quantization="int8")
    assert "up to date" in caplog.text
    assert (out / "model.bin").stat().st_mtime_ns == first.st_mtime_ns

    convert_nmt.convert_hf_model(nmt_hf_models["marian"], out, quantization="float32")
    assert json.loads((out / META_FILE).read_text())["quantization"] == "float32"
    assert (out / "model.bin").stat().st_size > first.st_size  # 4-byte weights, not 1

    before = (out / "model.bin").stat().st_mtime_ns
    convert_nmt.convert_hf_model(nmt_hf_models["marian"], out, quantization="float32", force=True)
    assert (out / "model.bin").stat().st_mtime_ns != before
    assert not list(tmp_path.glob(".marian.*"))  # no leftover temp/old directories


def test_changed_source_model_is_reconverted(nmt_hf_models, tmp_path):
    hf = tmp_path / "hf"
    shutil.copytree(nmt_hf_models["marian"], hf)
    out = tmp_path / "ct2"
    convert_nmt.convert_hf_model(hf, out)
    old = json.loads((out / META_FILE).read_text())["fingerprint"]
    config = json.loads((hf / "config.json").read_text())
    config["max_position_embeddings"] = 32  # a changed model, same directory
    (hf / "config.json").write_text(json.dumps(config))
    convert_nmt.convert_hf_model(hf, out)
    meta = json.loads((out / META_FILE).read_text())
    assert meta["fingerprint"] != old and meta["max_positions"] == 32


def test_m2m100_language_tokens_are_at_their_ids(nmt_models, nmt_hf_models):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(nmt_hf_models["m2m100"])
    vocab = read_vocabularies(nmt_models["m2m100"])[1]
    for token, index in tokenizer.lang_token_to_id.items():
        assert vocab[index] == token
    # The target prefix is a real token: CTranslate2 keeps it as the first output token.
    translator = ctranslate2.Translator(str(nmt_models["m2m100"]), intra_threads=1)
    source = tokenizer.convert_ids_to_tokens(tokenizer("Hello world").input_ids)
    result = translator.translate_batch([source], target_prefix=[["__de__"]],
                                        max_decoding_length=5)
    assert result[0].hypotheses[0][0] == "__de__"
    assert "__de__" in vocab and vocab.count("__de__") == 1


def test_plain_ct2_converter_falls_into_the_m2m100_trap(nmt_hf_models, tmp_path):
    """Documents why convert_nmt.py rebuilds the vocabulary: the stock converter gets it wrong."""
    try:
        TransformersConverter(str(nmt_hf_models["m2m100"])).convert(str(tmp_path / "raw"))
    except ValueError as exc:  # vocabulary size mismatch: the language tokens are missing
        assert "vocabulary" in str(exc)
        return
    vocab = read_vocabularies(tmp_path / "raw")[1]
    assert "__de__" not in vocab  # or they are written as madeupword*


def test_marian_pad_anywhere_converts_to_the_same_model(nmt_hf_models, tmp_path):
    pad_first = build_marian(tmp_path / "pad_first", pad_last=False)
    assert json.loads((pad_first / "vocab.json").read_text())["<pad>"] == 0
    with pytest.raises(ValueError, match="vocabulary"):  # the stock converter's trap
        TransformersConverter(str(pad_first)).convert(str(tmp_path / "raw"))

    extra = {"target_langs": list(MARIAN_TARGETS), "target_tag": ">>{code}<<"}
    fixed = convert_nmt.convert_hf_model(pad_first, tmp_path / "fixed", extra_meta=extra,
                                     quantization="float32")
    ref = convert_nmt.convert_hf_model(nmt_hf_models["marian"], tmp_path / "ref", extra_meta=extra,
                                   quantization="float32")
    assert read_vocabularies(fixed) == read_vocabularies(ref)
    source = [[">>deu_Latn<<", "▁In", "▁the", "▁beginning", "</s>"],
              [">>fra_Latn<<", "▁the", "▁earth", "</s>"]]
    results = [
        [r.hypotheses[0] for r in ctranslate2.Translator(str(d), intra_threads=1)
         .translate_batch(source, beam_size=2, max_decoding_length=12)]
        for d in (fixed, ref)
    ]
    assert results[0] == results[1]


def test_family_is_detected_and_mismatch_rejected(nmt_hf_models, tmp_path):
    assert {f: convert_nmt.detect_family(d) for f, d in nmt_hf_models.items()} == {
        "marian": "marian", "m2m100": "m2m100", "nllb": "nllb"}
    with pytest.raises(ValueError, match="family 'nllb' does not match .* marian model"):
        convert_nmt.convert_hf_model(nmt_hf_models["marian"], tmp_path / "x", family="nllb")
    with pytest.raises(ValueError, match="family 'm2m100' does not match .* nllb model"):
        convert_nmt.convert_hf_model(nmt_hf_models["nllb"], tmp_path / "y", family="m2m100")


def test_bad_quantization_and_metadata_fail_before_converting(nmt_hf_models, tmp_path):
    with pytest.raises(ValueError, match="quantization 'int4' is not one of int8"):
        convert_nmt.convert_hf_model(nmt_hf_models["marian"], tmp_path / "q", quantization="int4")
    with pytest.raises(ValueError, match="unknown language code 'german'"):
        convert_nmt.convert_hf_model(nmt_hf_models["marian"], tmp_path / "m",
                                 extra_meta={"target_langs": ["german"]})
    assert not (tmp_path / "q").exists() and not (tmp_path / "m").exists()


def test_missing_hub_model_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"'facebook/nllb-200-distilled-600M' is not a "
                       r"local directory .*hf download facebook/nllb-200-distilled-600M.* local"):
        convert_nmt.convert_hf_model("facebook/nllb-200-distilled-600M", tmp_path / "nllb")
    assert not (tmp_path / "nllb").exists()


def test_catalog_and_model_resolution(nmt_hf_models):
    catalog = convert_nmt.load_catalog()
    nllb = catalog["nllb-200-distilled-600M"]
    assert (nllb.hub_id, nllb.family) == ("facebook/nllb-200-distilled-600M", "nllb")
    assert catalog["m2m100_418M"].family == "m2m100"
    for lang in ("de", "fr", "es", "ru", "ar", "ko"):
        entry = catalog[f"opus-mt-en-{lang}"]
        assert entry.family == "marian" and len(entry.target_langs) == 1
    assert convert_nmt.resolve_model("opus-mt-en-de", catalog)[:2] == (
        "opus-mt-en-de", "Helsinki-NLP/opus-mt-en-de")
    # A hub id of a catalogue model gets the catalogue's metadata and key.
    name, source, entry = convert_nmt.resolve_model("Helsinki-NLP/opus-mt-en-ar", catalog)
    assert (name, entry.target_tag) == ("opus-mt-en-ar", ">>ara<<")
    assert convert_nmt.resolve_model("someone/my-model", catalog) == (
        "my-model", "someone/my-model", None)
    assert convert_nmt.resolve_model(str(nmt_hf_models["nllb"]), catalog)[0] == "nllb"
    with pytest.raises(FileNotFoundError, match="not a key of nmt.yaml .* fix convert_nmt.model"):
        convert_nmt.resolve_model("no such model", catalog)


def test_catalog_rejects_bad_entries(tmp_path):
    path = tmp_path / "nmt.yaml"
    path.write_text(yaml.safe_dump({"models": {"x": {"hub_id": "a/b", "family": "t5"}}}))
    with pytest.raises(ValueError, match="unknown NMT family 't5'"):
        convert_nmt.load_catalog(path)
    path.write_text(yaml.safe_dump({"models": {"x": {"hub_id": "a/b", "familly": "nllb"}}}))
    with pytest.raises(ValueError, match="unknown key 'familly'; did you mean 'family'"):
        convert_nmt.load_catalog(path)


def test_convert_nmt_stage_converts_then_caches(nmt_hf_models, tmp_path, monkeypatch):
    from stages.convert_nmt import main

    monkeypatch.chdir(tmp_path)
    params = {"convert_nmt": {"models": [], "family": "auto",
                              "quantization": "int8", "output_dir": "models", "force": False}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    argv = ["--params", "params.yaml", "--model", str(nmt_hf_models["nllb"])]
    assert main(argv) == 0
    metrics = json.loads((tmp_path / "data/metrics/convert_nmt@nllb.json").read_text())
    assert metrics["converted"] == 1 and metrics["size_mb"] > 0
    assert json.loads((tmp_path / "models/nllb/meta.json").read_text())["config"] == (
        params["convert_nmt"])
    assert main(argv) == 0
    assert json.loads((tmp_path / "data/metrics/convert_nmt@nllb.json").read_text())[
        "converted"] == 0


def test_convert_nmt_stage_reports_missing_model_in_one_line(tmp_path, monkeypatch, capsys):
    from stages.convert_nmt import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    params = {"convert_nmt": {"output_dir": "models"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert main(["--params", "params.yaml", "--model", "nllb-200-distilled-600M"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = [x for x in err.splitlines() if x.startswith("error:")]
    assert len(line) == 1 and re.search(r"hf download facebook/nllb-200-distilled-600M", line[0])
    assert not (tmp_path / "models").exists()


def test_convert_config_matches_params():
    cfg = c.load_section("params.yaml", "convert_nmt", ConvertNmtConfig)
    assert cfg.models == ()  # the default profile trains its own model
    paper = yaml.safe_load(open("configs/profiles/paper.yaml"))["convert_nmt"]
    assert paper["models"] and set(paper["models"]) <= set(convert_nmt.load_catalog())
    assert os.path.basename(convert_nmt.CATALOG_PATH) == "nmt.yaml"


def test_incomplete_model_directory_is_reported(nmt_hf_models, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(nmt_hf_models["marian"], broken)
    for name in ("source.spm", "target.spm", "vocab.json"):
        (broken / name).unlink()
    with pytest.raises(FileNotFoundError, match=r"broken is incomplete: no source.spm; no "
                       r"target.spm; no vocab.json; download"):
        convert_nmt.convert_hf_model(broken, tmp_path / "out")
    (broken / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"no model.safetensors or .*pytorch_model.bin"):
        convert_nmt.convert_hf_model(broken, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.converting").exists()
