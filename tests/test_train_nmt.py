import json
import logging

import pandas as pd
import pytest
import torch

from pipeline.config import LangsConfig, from_mapping
from pipeline.live import read_log
from pipeline.translate import train_nmt
from pipeline.translate.train_nmt import TrainNmtConfig

LANGS = LangsConfig(source="eng_Latn", pool=("deu_Latn", "fra_Latn"))
EN = "the a red blue green cat dog house tree sees eats big small old new".split()
DE = "der ein rot blau grün Katze Hund Haus Baum sieht frisst groß klein alt neu".split()
FR = "le un rouge bleu vert chat chien maison arbre voit mange grand petit vieux neuf".split()


def _table(n: int, offset: int) -> pd.DataFrame:
    rows = []
    for i in range(n):
        idx = [(i * 7 + k * 3 + offset) % len(EN) for k in range(4)]
        rows.append({
            "id": f"{i + offset}",
            "eng_Latn": " ".join(EN[j] for j in idx),
            "deu_Latn": " ".join(DE[j] for j in idx),
            "fra_Latn": " ".join(FR[j] for j in idx),
        })
    return pd.DataFrame(rows)


@pytest.fixture()
def tiny_cfg(tmp_path):
    train, dev = tmp_path / "train.parquet", tmp_path / "dev.parquet"
    _table(80, 0).to_parquet(train)
    _table(10, 100).to_parquet(dev)

    def make(**overrides):
        base = {
            "train": str(train), "dev": str(dev), "vocab_size": 60, "d_model": 16,
            "encoder_layers": 1, "decoder_layers": 1, "heads": 2, "ffn_dim": 32,
            "dropout": 0.1, "batch_tokens": 64, "lr": 3e-3, "warmup_steps": 2,
            "max_steps": 6, "eval_every": 3, "dev_sentences": 5, "beam_size": 1,
            "device": "cpu", "threads": 1, "output_dir": str(tmp_path / "ct2"),
            "work_dir": str(tmp_path / "work"),
        }
        base.update(overrides)
        return from_mapping(TrainNmtConfig, base)

    return make


def test_tags_are_single_pieces_and_pad_is_last(tiny_cfg):
    cfg = tiny_cfg(max_steps=1)
    train_nmt.train(cfg, LANGS)
    vocab = json.load(open(f"{cfg.work_dir}/hf_model/vocab.json"))
    assert vocab["</s>"] == 0 and vocab["<unk>"] == 1
    assert vocab["<pad>"] == max(vocab.values())
    assert {">>deu_Latn<<", ">>fra_Latn<<"} <= set(vocab)


def test_run_cut_by_the_time_budget_fails_and_resumes_to_the_uninterrupted_model(tiny_cfg,
                                                                                tmp_path):
    straight = tiny_cfg(work_dir=str(tmp_path / "a"))
    train_nmt.train(straight, LANGS)
    with pytest.raises(ValueError, match=r"train_nmt: max_minutes \(1e-06\) stopped training at "
                                         r"step 1 of 6 .* set allow_partial: true"):
        train_nmt.train(tiny_cfg(work_dir=str(tmp_path / "b"), max_minutes=1e-6), LANGS)
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["step"] == 1
    assert not (tmp_path / "b" / "hf_model").exists()
    # The budget is per run and resume-neutral: a rerun continues from the checkpoint.
    resumed = train_nmt.train(tiny_cfg(work_dir=str(tmp_path / "b")), LANGS)
    assert resumed["steps"] == 6 and resumed["stopped_by"] == "max_steps"
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_changed_config_or_data_discards_checkpoint_and_sentencepiece(tiny_cfg, tmp_path,
                                                                     caplog):
    cfg = tiny_cfg(max_steps=3)
    train_nmt.train(cfg, LANGS)
    work = tmp_path / "work"
    spm = (work / "spm.model").read_bytes()
    with caplog.at_level(logging.INFO):
        assert train_nmt.train(tiny_cfg(max_steps=3, threads=2), LANGS)["steps"] == 3
    assert "resumed at step 3" in caplog.text and "discarding" not in caplog.text

    caplog.clear()
    with caplog.at_level(logging.INFO):
        train_nmt.train(tiny_cfg(max_steps=3, vocab_size=50), LANGS)
    assert f"discarding stale checkpoint and sentencepiece model in {work}: fingerprint " \
           "changed (config)" in caplog.text
    assert "resumed" not in caplog.text and (work / "spm.model").read_bytes() != spm

    _table(80, 1).to_parquet(tmp_path / "train.parquet")  # the same config, other data
    caplog.clear()
    with caplog.at_level(logging.INFO):
        train_nmt.train(tiny_cfg(max_steps=3, vocab_size=50), LANGS)
    assert "fingerprint changed (train)" in caplog.text and "resumed" not in caplog.text


def test_allow_partial_accepts_a_run_cut_by_the_time_budget(tiny_cfg):
    partial = train_nmt.train(tiny_cfg(max_minutes=1e-6, allow_partial=True), LANGS)
    assert partial["steps"] == 1 and partial["stopped_by"] == "max_minutes"


def test_stage_trains_exports_and_scores(tiny_cfg):
    from pipeline.translate.engine import load_translator

    cfg = tiny_cfg(max_steps=4)
    metrics = train_nmt.run(cfg, LANGS)
    assert metrics["steps"] == 4
    log = read_log(f"{cfg.work_dir}/log")  # DVCLive, at each evaluation and the last step
    assert log.columns.tolist() == ["step", "dev_loss", "epoch", "train_loss"]
    assert log["step"].tolist() == [3, 4] and log["dev_loss"].iloc[-1] == metrics["dev_loss"]
    assert set(metrics) >= {"chrf_deu_Latn", "chrf_fra_Latn", "bleu_deu_Latn", "chrf_mean"}
    meta = json.load(open(f"{cfg.output_dir}/multiway_nmt.json"))
    assert meta["family"] == "marian" and meta["target_tag"] == ">>{code}<<"
    translator = load_translator(cfg.output_dir, device="cpu", intra_threads=1, beam_size=1)
    source = translator.encode(["the red cat"], "fra_Latn")[0]
    assert source[0] == ">>fra_Latn<<" and source[-1] == "</s>"
    assert isinstance(translator.translate(["the red cat"], "deu_Latn")[0], str)
    with pytest.raises(ValueError, match="kor_Hang"):
        translator.translate(["the red cat"], "kor_Hang")
