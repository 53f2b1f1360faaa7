import dataclasses
import json
import re
import shutil
import sys
from pathlib import Path

import ctranslate2
import pandas as pd
import pyarrow.parquet as pq
import pytest
import sacrebleu
import yaml

from pipeline import config as c
from pipeline.io import read_table, write_table
from pipeline.translate import engine, translate
from pipeline.translate.engine import CT2Translator, load_translator
from pipeline.translate.translate import TranslateConfig
from tests.fixtures.nmt import SENTENCES, source_frame
from tests.test_kill_resume import assert_no_temp_files, kill_when, rerun, stage_cmd, stage_env

LANGS = c.LangsConfig(source="eng_Latn", pool=("deu_Latn", "fra_Latn"))
PREFIX = {"marian": None, "m2m100": ["__de__"], "nllb": ["deu_Latn"]}
TEXTS = [*SENTENCES[:8], "Hello world, this is a test.", "A"]


def make_cfg(tmp_path: Path, model_dir: Path, source_path: Path, **overrides
             ) -> TranslateConfig:
    base = dict(source=str(source_path), model_dir=str(model_dir), device="cpu", beam_size=2,
                max_batch_tokens=128, max_decoding_length=24, intra_threads=1, shard_size=16,
                references=None, output_dir=str(tmp_path / "out"))
    return TranslateConfig(**{**base, **overrides})


def params_file(tmp_path: Path, cfg: TranslateConfig) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"langs": c.to_dict(LANGS), "translate": c.to_dict(cfg)}))
    return path


def hf_tokenizer(hf_dir: Path, family: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir)
    tok.src_lang = {"marian": None, "m2m100": "en", "nllb": "eng_Latn"}[family]
    return tok


# --- engine: same tokens and outputs as raw CTranslate2 --------------------------------------


@pytest.mark.parametrize("family", ["marian", "m2m100", "nllb"])
def test_engine_equals_raw_ctranslate2_token_for_token(family, nmt_models, nmt_hf_models):
    tok = hf_tokenizer(nmt_hf_models[family], family)
    tagged = [f">>deu_Latn<< {t}" if family == "marian" else t for t in TEXTS]
    hf_tokens = [tok.convert_ids_to_tokens(tok(t).input_ids) for t in tagged]

    translator = load_translator(nmt_models[family], intra_threads=1, beam_size=2,
                                 max_batch_tokens=64, max_decoding_length=24)
    assert translator.encode(TEXTS, "deu_Latn") == hf_tokens

    prefix = PREFIX[family]
    raw = ctranslate2.Translator(str(nmt_models[family]), device="cpu", compute_type="int8",
                                 intra_threads=1)
    results = raw.translate_batch(hf_tokens, target_prefix=[prefix] * len(TEXTS) if prefix
                                  else None, beam_size=2, max_decoding_length=24)
    if prefix:  # the language token survived conversion (not <unk>)
        assert all(r.hypotheses[0][:1] == prefix for r in results)
    expected = [r.hypotheses[0][len(prefix or []):] for r in results]
    got = list(translator.translate_tokens(translator.encode(TEXTS, "deu_Latn"), "deu_Latn"))
    assert got == expected

    # The repetition guard is passed through unchanged (random models loop, so it bites).
    guarded = load_translator(nmt_models[family], intra_threads=1, beam_size=2,
                              max_batch_tokens=64, max_decoding_length=24, no_repeat_ngram_size=2)
    raw_guarded = raw.translate_batch(hf_tokens, target_prefix=[prefix] * len(TEXTS) if prefix
                                      else None, beam_size=2, max_decoding_length=24,
                                      no_repeat_ngram_size=2)
    assert list(guarded.translate_tokens(guarded.encode(TEXTS, "deu_Latn"), "deu_Latn")) == [
        r.hypotheses[0][len(prefix or []):] for r in raw_guarded]

    # Detokenisation = the HF tokenizer's, with language tokens (gibberish here) dropped.
    texts = translator.translate(TEXTS, "deu_Latn")
    for hyp, text in zip(expected, texts):
        kept = [t for t in hyp if not re.fullmatch(r">>.+<<|__[a-z]+__|madeupword\d+|"
                                                   r"[a-z]{3}_[A-Z][a-z]{3}", t)]
        assert text == tok.decode(tok.convert_tokens_to_ids(kept), skip_special_tokens=True)


def test_marian_single_target_model_gets_no_tag(nmt_models, tmp_path):
    model = tmp_path / "single"
    shutil.copytree(nmt_models["marian"], model)
    meta = json.loads((model / "multiway_nmt.json").read_text())
    meta.update(target_langs=["deu_Latn"], target_tag=None)
    (model / "multiway_nmt.json").write_text(json.dumps(meta))
    translator = load_translator(model, intra_threads=1)
    assert translator.encode(["Hello"], "deu_Latn")[0][0] != ">>deu_Latn<<"
    with pytest.raises(ValueError, match="does not translate into fra_Latn .* knows deu_Latn"):
        translator.check("fra_Latn")


def test_long_inputs_are_truncated_to_the_position_table(nmt_models):
    long = " ".join(SENTENCES * 3)  # ~300 tokens; the tiny models have 64 positions
    for model_dir in nmt_models.values():
        translator = load_translator(model_dir, intra_threads=1, max_decoding_length=500)
        assert translator.max_decoding_length == 64
        assert len(translator.translate([long], "deu_Latn")) == 1


def test_compute_type_resolution():
    assert engine.resolve_compute_type("cpu", "auto") == "int8"
    assert engine.resolve_compute_type("cpu", "float32") == "float32"
    with pytest.raises(ValueError, match="compute type 'float8' is not supported on cpu"):
        engine.resolve_compute_type("cpu", "float8")
    with pytest.raises(ValueError, match="beam_size must be a positive integer, got 0"):
        engine.DecodingOptions(beam_size=0)


# --- stage: output, metrics, references ------------------------------------------------------


def test_stage_writes_source_order_and_scores_references(nmt_models, nmt_source, tmp_path):
    refs = source_frame(60).iloc[::3].rename(columns={"eng_Latn": "deu_Latn"})
    refs["deu_Latn"] = [f"Am Anfang schuf Gott {i}" for i in range(len(refs))]
    write_table(refs, tmp_path / "refs.parquet")
    cfg = make_cfg(tmp_path, nmt_models["nllb"], nmt_source,
                   references=str(tmp_path / "refs.parquet"))
    metrics = translate.run(cfg, LANGS, "deu_Latn")

    out = read_table(tmp_path / "out/deu_Latn.parquet")
    source = read_table(nmt_source)
    assert out.columns.tolist() == ["id", "deu_Latn"]
    assert out["id"].tolist() == source["id"].tolist()
    translator = load_translator(nmt_models["nllb"], intra_threads=1, beam_size=2,
                                 max_batch_tokens=128, max_decoding_length=24,
                                 no_repeat_ngram_size=cfg.no_repeat_ngram_size)
    assert out["deu_Latn"].tolist() == translator.translate(source["eng_Latn"].tolist(),
                                                            "deu_Latn")
    assert not (tmp_path / "out/deu_Latn.parts").exists()
    work = metrics["runtime"]
    assert metrics["sentences"] == work["translated_sentences"] == 60
    assert metrics["shards"] == 4 and work["shards_reused"] == 0
    assert work["target_tokens"] > 0 and work["target_tokens_per_s"] > 0

    hyps = out.set_index("id").loc[refs["id"], "deu_Latn"].tolist()
    assert metrics["references_matched"] == len(refs)
    assert metrics["chrf"] == round(sacrebleu.corpus_chrf(hyps, [refs["deu_Latn"].tolist()])
                                    .score, 2)
    assert metrics["bleu"] == round(sacrebleu.corpus_bleu(hyps, [refs["deu_Latn"].tolist()])
                                    .score, 2)


def test_references_without_the_language_are_skipped(nmt_models, nmt_source, tmp_path):
    cfg = make_cfg(tmp_path, nmt_models["marian"], nmt_source, references=str(nmt_source))
    metrics = translate.run(cfg, LANGS, "fra_Latn")
    assert "chrf" not in metrics and metrics["sentences"] == 60


def test_empty_rows_and_empty_source(nmt_models, tmp_path):
    frame = pd.DataFrame({"id": ["a", "b", "c"], "eng_Latn": ["Hello world.", "", "  "]})
    write_table(frame, tmp_path / "src.parquet")
    translate.run(make_cfg(tmp_path, nmt_models["m2m100"], tmp_path / "src.parquet"), LANGS,
              "deu_Latn")
    out = read_table(tmp_path / "out/deu_Latn.parquet")
    assert out["deu_Latn"].tolist()[1:] == ["", ""]

    write_table(frame.iloc[:0], tmp_path / "empty.parquet")
    metrics = translate.run(make_cfg(tmp_path, nmt_models["m2m100"], tmp_path / "empty.parquet"),
                        LANGS, "fra_Latn")
    empty = read_table(tmp_path / "out/fra_Latn.parquet")
    assert empty.columns.tolist() == ["id", "fra_Latn"] and len(empty) == 0
    assert metrics["shards"] == 0


def test_shards_do_not_depend_on_parquet_row_groups(nmt_models, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    frame = source_frame(37)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp_path / "rg.parquet",
                   row_group_size=5)
    write_table(frame, tmp_path / "one.parquet")
    for name in ("rg", "one"):
        cfg = make_cfg(tmp_path, nmt_models["marian"], tmp_path / f"{name}.parquet",
                       shard_size=8, output_dir=str(tmp_path / name))
        assert translate.run(cfg, LANGS, "deu_Latn")["shards"] == 5
    assert read_table(tmp_path / "rg/deu_Latn.parquet").equals(
        read_table(tmp_path / "one/deu_Latn.parquet"))


# --- resumability ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def uninterrupted(nmt_models, nmt_source, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("uninterrupted")
    translate.run(make_cfg(tmp, nmt_models["marian"], nmt_source), LANGS, "deu_Latn")
    return read_table(tmp / "out/deu_Latn.parquet")


def fail_after(monkeypatch, shards: int) -> None:
    """Make the engine raise when it starts shard number ``shards`` (0-based)."""
    calls = {"n": 0}
    original = CT2Translator.translate_tokens

    def flaky(self, sources, target_lang):
        if calls["n"] == shards:
            raise RuntimeError("injected failure")
        calls["n"] += 1
        yield from original(self, sources, target_lang)

    monkeypatch.setattr(CT2Translator, "translate_tokens", flaky)


def test_resume_after_injected_failure(nmt_models, nmt_source, tmp_path, monkeypatch,
                                       uninterrupted):
    cfg = make_cfg(tmp_path, nmt_models["marian"], nmt_source)
    with monkeypatch.context() as m:
        fail_after(m, 2)
        with pytest.raises(RuntimeError, match="injected failure"):
            translate.run(cfg, LANGS, "deu_Latn")
    parts = tmp_path / "out/deu_Latn.parts"
    assert sorted(p.name for p in parts.glob("shard-*")) == [
        "shard-000000.parquet", "shard-000001.parquet"]
    assert not (tmp_path / "out/deu_Latn.parquet").exists()

    work = translate.run(cfg, LANGS, "deu_Latn")["runtime"]
    assert work["shards_reused"] == 2 and work["translated_sentences"] == 60 - 32
    pd.testing.assert_frame_equal(read_table(tmp_path / "out/deu_Latn.parquet"), uninterrupted)
    assert not parts.exists()


def test_corrupt_shard_is_redone_and_changed_settings_start_over(
        nmt_models, nmt_source, tmp_path, monkeypatch, uninterrupted):
    cfg = make_cfg(tmp_path, nmt_models["marian"], nmt_source)
    parts = tmp_path / "out/deu_Latn.parts"
    with monkeypatch.context() as m:
        fail_after(m, 3)
        with pytest.raises(RuntimeError):
            translate.run(cfg, LANGS, "deu_Latn")
    shard = parts / "shard-000001.parquet"
    column = pq.ParquetFile(shard).metadata.row_group(0).column(1)
    data = bytearray(shard.read_bytes())
    # Flip a byte in the middle of the translation column's pages (not the footer).
    data[column.data_page_offset + column.total_compressed_size // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    (parts / "shard-000002.parquet").write_bytes(b"PAR1 truncated")
    metrics = translate.run(cfg, LANGS, "deu_Latn")
    assert metrics["runtime"]["shards_reused"] == 1
    pd.testing.assert_frame_equal(read_table(tmp_path / "out/deu_Latn.parquet"), uninterrupted)

    with monkeypatch.context() as m:
        fail_after(m, 2)
        with pytest.raises(RuntimeError):
            translate.run(cfg, LANGS, "deu_Latn")
    greedy = dataclasses.replace(cfg, beam_size=1)  # another job: old shards must not be used
    assert translate.run(greedy, LANGS, "deu_Latn")["runtime"]["shards_reused"] == 0


def kill_and_resume(nmt_models, tmp_path: Path, env_extra: dict | None = None, seed: int = 0,
                    **cfg_extra) -> None:
    """SIGKILL the stage process a seeded random moment after its first shard; rerun it.

    The rerun must reuse the finished shards, print no traceback, leave no temp file and
    write the output of an uninterrupted run, byte for byte.
    """
    write_table(source_frame(1200), tmp_path / "big.parquet")
    cfg = make_cfg(tmp_path, nmt_models["marian"], tmp_path / "big.parquet", shard_size=30,
                   output_dir="out", **cfg_extra)
    cmd = stage_cmd("translate", params_file(tmp_path, cfg), "--lang", "deu_Latn")
    env = stage_env(**(env_extra or {}))
    parts = tmp_path / "out/deu_Latn.parts"
    kill_when(cmd, tmp_path, env, (parts / "shard-000000.parquet").exists, seed, max_delay=0.2)
    done = len(list(parts.glob("shard-*.parquet")))
    assert 1 <= done < 40 and not (tmp_path / "out/deu_Latn.parquet").exists()

    log = rerun(cmd, tmp_path, env)
    assert f"resuming: {done} shard(s) of an interrupted run" in log
    metrics = json.loads((tmp_path / "data/metrics/translate@deu_Latn.json").read_text())
    assert metrics["shards"] == 40

    reference_cfg = make_cfg(tmp_path, nmt_models["marian"], tmp_path / "big.parquet",
                             shard_size=30, output_dir=str(tmp_path / "ref"))
    translate.run(reference_cfg, LANGS, "deu_Latn")
    assert ((tmp_path / "out/deu_Latn.parquet").read_bytes()
            == (tmp_path / "ref/deu_Latn.parquet").read_bytes())
    assert not parts.exists()
    assert_no_temp_files(tmp_path)


# --- bad inputs: one line, no output ---------------------------------------------------------


def _corrupt_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    (dst / "model.bin").write_bytes(b"not a model")
    return dst


def _model_without_meta(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    (dst / "multiway_nmt.json").unlink()
    return dst


BAD_INPUTS = {
    # name: (model family or builder, lang, config overrides, exception, message)
    "unknown language": ("marian", "deu_Latx", {}, ValueError,
                         "unknown language code 'deu_Latx'; did you mean deu_Latn"),
    "language not in the Marian model": ("marian", "rus_Cyrl", {}, ValueError,
                                         "does not translate into rus_Cyrl"),
    "no M2M100 token": ("m2m100", "zho_Hant", {}, ValueError, "no ISO 639-1 code"),
    "missing model": ("missing", "deu_Latn", {}, FileNotFoundError,
                      "NMT model directory .* does not exist; train it with train_nmt"),
    "corrupt model": ("corrupt", "deu_Latn", {}, ValueError,
                      "CTranslate2 cannot load .* on cpu .*; if the model directory is "
                      "incomplete .* reconvert it"),
    "model without metadata": ("nometa", "deu_Latn", {}, FileNotFoundError,
                               "has no multiway_nmt.json.* set translate.family"),
    "family mismatch": ("marian", "deu_Latn", {"family": "nllb"}, ValueError,
                        "translate.family is 'nllb' but .* says 'marian'"),
    "missing source": ("marian", "deu_Latn", {"source": "nope.parquet"}, FileNotFoundError,
                       "translate.source nope.parquet does not exist; run prepare_source"),
    "missing references": ("marian", "deu_Latn", {"references": "nope.parquet"},
                           FileNotFoundError, "translate.references nope.parquet does not"),
    "bad compute type": ("marian", "deu_Latn", {"compute_type": "float8"}, ValueError,
                         "compute type 'float8' is not supported on cpu"),
}


def _bad_setup(case: str, nmt_models, nmt_source, tmp_path):
    family, lang, overrides, exc, message = BAD_INPUTS[case]
    model = {
        "missing": lambda: tmp_path / "no_model",
        "corrupt": lambda: _corrupt_model(nmt_models["marian"], tmp_path / "corrupt"),
        "nometa": lambda: _model_without_meta(nmt_models["marian"], tmp_path / "nometa"),
    }.get(family, lambda: nmt_models[family])()
    return make_cfg(tmp_path, model, nmt_source, **overrides), lang, exc, message


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_one_line_error(case, nmt_models, nmt_source, tmp_path):
    cfg, lang, exc, message = _bad_setup(case, nmt_models, nmt_source, tmp_path)
    with pytest.raises(exc, match=message) as info:
        translate.run(cfg, LANGS, lang)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["unknown language", "missing model", "corrupt model",
                                  "language not in the Marian model"])
def test_bad_input_stage_script_exits_2(case, nmt_models, nmt_source, tmp_path, monkeypatch,
                                        capsys):
    from stages.translate import main

    cfg, lang, _, message = _bad_setup(case, nmt_models, nmt_source, tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["--params", str(params_file(tmp_path, cfg)), "--lang", lang]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.search(message, errors[0])
    assert not (tmp_path / "out").exists() and not (tmp_path / "data").exists()



# --- backends: the ray backend's one-line error, many GPUs for the local one -----------------


def test_ray_backend_without_ray_is_a_one_line_error(nmt_models, nmt_source, tmp_path,
                                                     monkeypatch, capsys):
    from stages.translate import main

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    cfg = make_cfg(tmp_path, nmt_models["marian"], nmt_source, backend="ray")
    with pytest.raises(ValueError, match=r"translate.backend is 'ray' but Ray is not "
                                         r"installed; install it with pip install -e "
                                         r"'\.\[scale\]'") as info:
        translate.run(cfg, LANGS, "deu_Latn")
    assert "\n" not in str(info.value)
    monkeypatch.chdir(tmp_path)
    assert main(["--params", str(params_file(tmp_path, cfg)), "--lang", "deu_Latn"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "Ray is not installed" in errors[0]
    assert not (tmp_path / "out").exists()


def test_device_index_is_checked_and_ignored_on_cpu(nmt_models, nmt_source, tmp_path):
    cfg = make_cfg(tmp_path, nmt_models["marian"], nmt_source, device_index=(1, 0))
    assert translate.run(cfg, LANGS, "deu_Latn")["shards"] == 4  # CPU: no GPU ids used
    for bad in ((), (0, 0), (-1,)):
        with pytest.raises(ValueError, match="device_index must be a non-empty list of "
                                             "distinct GPU ids"):
            load_translator(nmt_models["marian"], device_index=bad)


def test_a_shard_is_read_alone_as_the_stream_cuts_it(tmp_path):
    import pyarrow as pa

    from pipeline.translate.shards import iter_row_chunks, read_row_chunk

    frame = source_frame(53)
    for group in (1, 5, 16, 100):
        path = tmp_path / f"rg{group}.parquet"
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path,
                       row_group_size=group)
        for size in (1, 7, 16, 53, 60):
            chunks = list(iter_row_chunks(path, ["id", "eng_Latn"], size))
            for index, chunk in enumerate(chunks):
                assert read_row_chunk(path, ["id", "eng_Latn"], size, index).equals(chunk)
            assert read_row_chunk(path, ["id"], size, len(chunks)).num_rows == 0


def test_gpu_without_cublas12_fails_at_load_with_the_fix(nmt_models, monkeypatch):
    """CTranslate2 4.x needs cuBLAS 12 on the GPU; a CUDA-13-only machine lacks it. The load
    says so (and how to get it) instead of failing at the first batch or blaming the model."""
    import ctranslate2

    import pipeline.translate.engine as engine

    monkeypatch.setattr(ctranslate2, "get_cuda_device_count", lambda: 1)
    monkeypatch.setattr(engine, "load_cublas12",
                        lambda: "libcublas.so.12: cannot open shared object file")
    with pytest.raises(ValueError, match=r"CTranslate2 needs cuBLAS 12 on the GPU and cannot "
                       r"load it \(libcublas.so.12: cannot open shared object file\); install "
                       r"NVIDIA's cuBLAS 12 wheel .*make setup GPU=1.*or set device: cpu"):
        engine.load_translator(nmt_models["marian"], device="auto")
    monkeypatch.setattr(ctranslate2, "get_cuda_device_count", lambda: 0)
    with pytest.raises(ValueError, match="device 'cuda' was asked for but no GPU is visible"):
        engine.load_translator(nmt_models["marian"], device="cuda")
