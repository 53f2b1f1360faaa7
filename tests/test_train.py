"""train_encoder on a tiny random BERT and a tiny word-for-word multi-way corpus.

What is shown:
- the dataset columns follow the language order of ``langs``, whatever the file order;
- a short run lowers the dev loss, writes a model that plain ``SentenceTransformer(path)``
  reloads with the same embeddings as the in-memory model at the end of training (prompts and
  max length restored, frozen word embeddings untouched), meta.json, the loss curve, metrics;
- a run interrupted right after its step-8 checkpoint (an exception raised in ``on_save``, the
  state a kill leaves) and rerun resumes from step 8 (second epoch) and ends with exactly the
  weights and the loss curve of an uninterrupted run (same data order, RNG, optimiser and
  scheduler state);
- checkpoints of another fingerprint (config, base weights) are discarded, not resumed;
- a run cut short by ``max_minutes`` fails after its checkpoint, unless ``allow_partial``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from pipeline.config import LangsConfig, from_mapping, load_section
from pipeline.io import read_json, write_table
from pipeline.live import read_log
from pipeline.runtime import file_hash
from pipeline.train.data import load_regime
from pipeline.train.train_encoder import TrainEncoderConfig, _prepare_work_dir, run
from pipeline.train.trainer import (
    COMPLETE_FILE,
    TimeBudget,
    build_loss,
    freeze_word_embeddings,
    last_checkpoint,
)
from tests.fixtures.wordlevel import word_level_tokenizer

WORDS = {
    "eng_Latn": "cat dog bird man woman child apple house boat tree book car "
                "sees likes finds eats has wants red big small green old new",
    "deu_Latn": "katze hund vogel mann frau kind apfel haus boot baum buch auto "
                "sieht mag findet isst hat will rot gross klein gruen alt neu",
    "fra_Latn": "chat chien oiseau homme femme enfant pomme maison bateau arbre livre voiture "
                "voit aime trouve mange a veut rouge grand petit vert vieux neuf",
}
LEXICON = {lang: words.split() for lang, words in WORDS.items()}
POOL = ("deu_Latn", "fra_Latn")
COLUMNS = ("eng_Latn", *POOL)
N_TRAIN, N_DEV = 40, 16
PROBE = ["cat sees red boat", "frau mag alt buch", "enfant veut petit arbre"]


def make_corpus(n_rows: int, seed: int = 0) -> pd.DataFrame:
    """Distinct 'noun verb adjective noun' sentences, translated word for word."""
    rng = np.random.default_rng(seed)
    seen: set[tuple[int, ...]] = set()
    while len(seen) < n_rows:
        seen.add((rng.integers(12), 12 + rng.integers(6), 18 + rng.integers(6), rng.integers(12)))
    rows = sorted(seen)
    data = {lang: [" ".join(LEXICON[lang][i] for i in r) for r in rows] for lang in COLUMNS}
    df = pd.DataFrame({"id": [f"r{i:03d}" for i in range(n_rows)], **data})
    df["split"] = ["train"] * N_TRAIN + ["dev"] * (n_rows - N_TRAIN)
    # Columns deliberately out of langs order: the loader must reorder them.
    return df[["id", "split", "fra_Latn", "eng_Latn", "deu_Latn"]]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny encoder in a catalogue, the corpus tables and a params file."""
    from transformers import BertConfig, BertModel

    root = tmp_path_factory.mktemp("train")
    fast, vocab = word_level_tokenizer(
        sorted({w for ws in LEXICON.values() for w in ws} | {"query", ":"}))
    model_dir = root / "tiny-bert"
    torch.manual_seed(0)
    BertModel(BertConfig(
        vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=32,
    )).save_pretrained(model_dir)
    fast.save_pretrained(model_dir)
    catalogue = root / "encoders.yaml"
    catalogue.write_text(yaml.safe_dump({"tiny": {
        "source": str(model_dir), "pooling": "mean", "max_seq_length": 24,
        "prompts": {"query": "query: ", "document": "query: "}, "default_prompt": "query",
        "normalize": True,
    }}))

    corpus_dir = root / "corpus"
    multiway = make_corpus(N_TRAIN + N_DEV)
    write_table(multiway, corpus_dir / "multiway.parquet")
    langs = np.resize(POOL, len(multiway))
    x = [multiway.loc[i, lang] for i, lang in enumerate(langs)]
    enx = pd.DataFrame({"id": multiway["id"], "split": multiway["split"], "lang": langs,
                        "eng_Latn": multiway["eng_Latn"], "x": x})
    write_table(enx, corpus_dir / "enx.parquet")
    # The English-only control's second edition: the same words in reverse order.
    second = [" ".join(reversed(t.split())) for t in multiway["eng_Latn"]]
    write_table(multiway[["id", "split", "eng_Latn"]].assign(eng_Latn_second=second),
                corpus_dir / "english.parquet")

    section = {
        "corpus_dir": str(corpus_dir), "catalogue": str(catalogue),
        "loss_params": {"multiway_infonce": {"temperature": 0.1},
                        "bilingual_infonce": {"temperature": 0.1},
                        "xlco": {"temperature": 0.1, "symmetric": True}},
        # Random word embeddings must move for a 12-step run to learn translations; freezing
        # is exercised by the En-X run.
        "batch_size": 8, "max_seq_length": 16, "max_steps": 12, "max_minutes": 0,
        "learning_rate": 2e-3, "warmup_steps": 1, "freeze_embeddings": False, "dev_rows": 16,
        "logging_steps": 1, "save_steps": 4, "save_total_limit": 2, "device": "cpu",
        "threads": 1, "seeds": [7], "train_rows": 0, "trainable_layers": 0,
        "output_dir": str(root / "models"), "plots_dir": str(root / "plots"),
        "work_dir": str(root / "work"), "trunk_dir": str(root / "trunk"),
    }
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump({
        "langs": {"source": "eng_Latn", "pool": list(POOL)}, "train_encoder": section,
    }))
    return {"root": root, "params": params, "model_dir": model_dir, "corpus_dir": corpus_dir}


def load_cfg(workspace, **overrides) -> tuple[TrainEncoderConfig, LangsConfig]:
    params = yaml.safe_load(workspace["params"].read_text())
    section = {**params["train_encoder"], **overrides}
    return (from_mapping(TrainEncoderConfig, section),
            load_section(workspace["params"], "langs", LangsConfig))


class Capture:
    """Callback keeping the embeddings of PROBE when training ends (the in-memory model)."""

    def __init__(self):
        from transformers import TrainerCallback

        outer = self

        class _Cb(TrainerCallback):
            def on_train_end(self, args, state, control, model=None, **kwargs):
                outer.embeddings = model.encode(PROBE, convert_to_numpy=True)

        self.callback = _Cb()
        self.embeddings = None


class Killed(Exception):
    pass


def kill_after_save(step: int):
    from transformers import TrainerCallback

    class _Kill(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == step:
                raise Killed(f"killed after the checkpoint of step {step}")

    return _Kill()


@pytest.fixture(scope="module")
def trained(workspace):
    """One uninterrupted multiway run through the stage entry (params file, matrix flags)."""
    import pipeline.train.train_encoder as stage_mod
    from stages import train_encoder

    capture = Capture()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workspace["root"])  # data/metrics/... is relative to the working directory
        # The registry resolves "pipeline.train.train_encoder:run" at call time: add the capture.
        mp.setattr(stage_mod, "run", functools.partial(stage_mod.run, callbacks=[capture.callback]))
        rc = train_encoder.main(["--params", str(workspace["params"]),
                                 "--encoder", "tiny", "--regime", "multiway",
                                 "--seed", "7"])
    assert rc == 0
    metrics = read_json(workspace["root"] / "data/metrics/train_encoder@tiny-multiway-7.json")
    runtime = read_json(workspace["root"] / "data/runtime/train_encoder@tiny-multiway-7.json")
    return {"metrics": metrics, "runtime": runtime, "embeddings": capture.embeddings,
            "out": workspace["root"] / "models" / "tiny-multiway-7"}


# ----------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------


def test_columns_follow_language_order_not_file_order(workspace):
    _, langs = load_cfg(workspace)
    data = load_regime(workspace["corpus_dir"], "multiway", langs)
    assert data.columns == COLUMNS
    assert data.train.column_names == list(COLUMNS)
    assert (len(data.train), len(data.dev)) == (N_TRAIN, N_DEV)
    raw = pd.read_parquet(workspace["corpus_dir"] / "multiway.parquet")
    assert data.train[0] == {c: raw.loc[0, c] for c in COLUMNS}

    enx = load_regime(workspace["corpus_dir"], "enx", langs)
    assert enx.train.column_names == ["eng_Latn", "x"]
    assert enx.stats["train_x_langs"] == {"deu_Latn": N_TRAIN // 2, "fra_Latn": N_TRAIN // 2}


def test_train_rows_is_one_sample_for_every_regime_and_english_is_two_editions(workspace):
    langs = LangsConfig(source="eng_Latn", pool=POOL)
    tables = {r: load_regime(workspace["corpus_dir"], r, langs, train_rows=10).train.to_pandas()
              for r in ("multiway", "enx", "enx_mwloss", "enx_matched", "english", "xlco",
                        "xlco_multiway")}
    assert all(len(t) == 10 for t in tables.values())
    english = set(tables["multiway"]["eng_Latn"])
    assert all(set(t["eng_Latn"]) == english for t in tables.values())
    assert tables["english"].columns.tolist() == ["eng_Latn", "eng_Latn_second"]
    assert tables["english"]["eng_Latn_second"].tolist() == [
        " ".join(reversed(t.split())) for t in tables["english"]["eng_Latn"]]
    assert tables["enx_matched"].equals(tables["multiway"])
    assert tables["xlco_multiway"].equals(tables["multiway"])
    assert tables["xlco"].equals(tables["enx"])
    every = load_regime(workspace["corpus_dir"], "multiway", langs)
    assert len(every.train) == N_TRAIN and len(every.dev) == N_DEV


def test_data_errors_name_the_fix(workspace, tmp_path):
    _, langs = load_cfg(workspace)
    with pytest.raises(ValueError, match="unknown regime 'bilingual' \\(allowed: multiway, enx"):
        load_regime(workspace["corpus_dir"], "bilingual", langs)
    with pytest.raises(FileNotFoundError, match="build_corpus.references"):
        load_regime(workspace["corpus_dir"], "human", langs)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['kor_Hang'\]"):
        load_regime(workspace["corpus_dir"], "multiway",
                    LangsConfig(source="eng_Latn", pool=("deu_Latn", "kor_Hang")))
    broken = make_corpus(N_TRAIN + 2)
    broken.loc[3, "deu_Latn"] = " "
    write_table(broken, tmp_path / "multiway.parquet")
    with pytest.raises(ValueError, match=r"empty texts \{'deu_Latn': 1\}"):
        load_regime(tmp_path, "multiway", langs)


# ----------------------------------------------------------------------------------------
# Pieces of the trainer
# ----------------------------------------------------------------------------------------


def test_freeze_word_embeddings_and_loss_columns(workspace):
    from pipeline.encoders.catalog import load_encoder

    model = load_encoder("tiny", workspace["root"] / "encoders.yaml", device="cpu")
    emb = model[0].model.embeddings.word_embeddings.weight
    assert freeze_word_embeddings(model) == emb.numel() and not emb.requires_grad
    assert all(p.requires_grad for n, p in model.named_parameters() if "word_emb" not in n)
    with pytest.raises(ValueError, match="no '\\*word_embeddings.weight' parameter in Linear"):
        freeze_word_embeddings(torch.nn.Linear(2, 2))

    loss = build_loss("multiway_infonce", model, {"multiway_infonce": {"temperature": 0.2}},
                      COLUMNS)
    assert loss.get_config_dict()["languages"] == list(COLUMNS)
    assert loss.temperature == 0.2
    with pytest.raises(ValueError, match="loss 'bilingual_infonce' takes two columns, but this "
                                         "corpus has 3"):
        build_loss("bilingual_infonce", model, {}, COLUMNS)
    with pytest.raises(ValueError, match="has no hyperparameter 'temprature'"):
        build_loss("xlco", model, {"xlco": {"temprature": 0.1}}, ("eng_Latn", "x"))


def test_last_checkpoint_skips_and_removes_incomplete(tmp_path):
    for step, complete in ((2, True), (10, True), (12, False)):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        (d / "trainer_state.json").write_text("{}")  # written before the weights are done
        if complete:
            (d / COMPLETE_FILE).write_text(f"{step}\n")
    (tmp_path / "checkpoint-x").mkdir()
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-10"
    assert not (tmp_path / "checkpoint-12").exists()
    assert last_checkpoint(tmp_path / "missing") is None


def test_changed_fingerprint_discards_the_checkpoints(tmp_path, caplog):
    work = tmp_path / "work"
    parts = {"config": {"lr": 1}, "base": {"sha256": "a"}, "device": "cpu"}
    assert _prepare_work_dir(work, parts) is None  # nothing yet: the fingerprint is written
    (work / "checkpoint-3").mkdir()
    (work / "checkpoint-3" / COMPLETE_FILE).write_text("3\n")
    assert _prepare_work_dir(work, parts) == work / "checkpoint-3"
    with caplog.at_level(logging.WARNING):
        assert _prepare_work_dir(work, {**parts, "base": {"sha256": "b"}}) is None
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        f"discarding stale checkpoints in {work}: fingerprint changed (base)"]
    assert sorted(p.name for p in work.iterdir()) == ["fingerprint.json"]
    # State without a recorded fingerprint (an older layout) is not resumed either.
    (work / "fingerprint.json").unlink()
    (work / "checkpoint-3").mkdir()
    assert _prepare_work_dir(work, parts) is None and not (work / "checkpoint-3").exists()


def test_time_budget_checkpoints_and_stops():
    from transformers import TrainerControl, TrainerState

    control, state = TrainerControl(), TrainerState(global_step=3, max_steps=10)
    TimeBudget(0).on_step_end(None, state, control)
    assert not control.should_training_stop
    # The last step completes the run: over budget there is not a cut.
    last = TimeBudget(1e-9)
    last.on_step_end(None, TrainerState(global_step=10, max_steps=10), control)
    assert not last.triggered and not control.should_training_stop
    budget = TimeBudget(1e-9)
    budget.on_step_end(None, state, control)
    assert budget.triggered and control.should_training_stop and control.should_save


def test_time_budget_agrees_across_processes(tmp_path):
    """Under torch.distributed the stop decision is all-reduced (a world of one here)."""
    import types

    import torch.distributed as dist
    from transformers import TrainerControl, TrainerState

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        control, args = TrainerControl(), types.SimpleNamespace(device=torch.device("cpu"))
        state = TrainerState(global_step=1, max_steps=2)
        TimeBudget(60).on_step_end(args, state, control)
        assert not control.should_training_stop
        TimeBudget(1e-9).on_step_end(args, state, control)
        assert control.should_training_stop
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------
# The stage
# ----------------------------------------------------------------------------------------


def test_training_lowers_dev_loss_and_saves_a_reloadable_model(workspace, trained):
    from sentence_transformers import SentenceTransformer

    m = trained["metrics"]
    assert m["steps"] == 12 and m["stopped_by"] == "max_steps"
    assert trained["runtime"]["resumed_from_step"] == 0 and "resumed_from_step" not in m
    assert m["dev_loss_end"] < m["dev_loss_start"] - 0.1  # chance level is log(22) = 3.09
    assert m["rows_trained"] == 12 * 8 and m["columns"] == 3
    assert m["frozen_params"] == 16 * 16 + 16  # the pooler only: no sentence embedding uses it

    out = trained["out"]
    reloaded = SentenceTransformer(str(out), device="cpu")
    assert reloaded.default_prompt_name == "query" and reloaded.max_seq_length == 24
    np.testing.assert_allclose(reloaded.encode(PROBE), trained["embeddings"], atol=1e-6)

    meta = read_json(out / "meta.json")
    assert meta["corpus"]["sha256"] == file_hash(workspace["corpus_dir"] / "multiway.parquet")
    assert meta["columns"] == list(COLUMNS) and meta["prompt"] == "query: "
    assert meta["loss"]["name"] == "multiway_infonce"
    assert meta["config"]["max_steps"] == 12 and "torch" in meta["versions"] and "git" not in meta

    curve = read_log(workspace["root"] / "plots" / "tiny-multiway-7")  # DVCLive
    assert list(curve["step"]) == list(range(1, 13))
    terms = sorted(f"anchor_{c}" for c in COLUMNS)
    assert set(curve.columns) == {"step", "loss", *terms, "learning_rate", "grad_norm", "epoch"}
    np.testing.assert_allclose(curve[terms].sum(axis=1), curve["loss"], atol=2e-3)
    assert not (workspace["root"] / "work" / "tiny-multiway-7").exists()  # checkpoints removed


def assert_same_weights(model_dir, reference_dir) -> None:
    """The two saved models hold exactly the same tensors."""
    from sentence_transformers import SentenceTransformer

    state = SentenceTransformer(str(model_dir), device="cpu").state_dict()
    expected = SentenceTransformer(str(reference_dir), device="cpu").state_dict()
    assert state.keys() == expected.keys()
    for name, tensor in state.items():
        assert torch.equal(tensor, expected[name]), name


def test_interrupted_run_resumes_to_the_uninterrupted_model(workspace, trained):
    root = workspace["root"] / "killed"
    cfg, langs = load_cfg(workspace, output_dir=str(root / "models"),
                          plots_dir=str(root / "plots"), work_dir=str(root / "work"))
    with pytest.raises(Killed):
        run(cfg, langs, "tiny", "multiway", 7, callbacks=[kill_after_save(8)])
    work = root / "work" / "tiny-multiway-7"
    assert sorted(p.name for p in work.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-8"]
    assert not (root / "models" / "tiny-multiway-7").exists()

    metrics = run(cfg, langs, "tiny", "multiway", 7)
    # Step 8 is inside the second epoch (5 batches of 8 rows per epoch): its batch order must
    # come from seed + epoch, not from a generator that the restart has reset.
    assert metrics["runtime"]["resumed_from_step"] == 8 and metrics["steps"] == 12
    assert metrics["dev_loss_start"] == trained["metrics"]["dev_loss_start"]
    assert_same_weights(root / "models" / "tiny-multiway-7", trained["out"])
    # No clock on the model card (a DVC output); its training-log table still covers only
    # the steps run by the resumed process.
    for out in (root / "models" / "tiny-multiway-7", trained["out"]):
        assert "Training Time" not in (out / "README.md").read_text()
    pd.testing.assert_frame_equal(
        read_log(root / "plots" / "tiny-multiway-7"),
        read_log(workspace["root"] / "plots" / "tiny-multiway-7"),
    )
    assert metrics["dev_loss_end"] == pytest.approx(trained["metrics"]["dev_loss_end"], abs=1e-6)


def test_time_budget_fails_the_stage_unless_partial_is_allowed(workspace, trained):
    root = workspace["root"] / "budget"
    dirs = {"output_dir": str(root / "models"), "plots_dir": str(root / "plots"),
            "work_dir": str(root / "work")}
    cfg, langs = load_cfg(workspace, max_minutes=1e-9, **dirs)
    with pytest.raises(ValueError, match=r"train_encoder tiny-multiway-7: max_minutes \(1e-09\) "
                                         r"stopped training at step 1 of 12 .* set "
                                         r"allow_partial: true"):
        run(cfg, langs, "tiny", "multiway", 7)
    assert last_checkpoint(root / "work" / "tiny-multiway-7").name == "checkpoint-1"
    assert not (root / "models" / "tiny-multiway-7").exists()
    # The budget is per run and resume-neutral: a rerun continues to the uninterrupted model.
    cfg, langs = load_cfg(workspace, **dirs)
    assert run(cfg, langs, "tiny", "multiway", 7)["stopped_by"] == "max_steps"
    assert_same_weights(root / "models" / "tiny-multiway-7", trained["out"])

    cfg, langs = load_cfg(workspace, max_minutes=1e-9, allow_partial=True,
                          **{**dirs, "work_dir": str(root / "partial")})
    metrics = run(cfg, langs, "tiny", "multiway", 7)
    assert metrics["steps"] == 1 and metrics["stopped_by"] == "max_minutes"


def test_base_weights_are_part_of_the_fingerprint(workspace, tmp_path):
    from pipeline.encoders.catalog import Located
    from pipeline.train.train_encoder import fingerprint_parts

    cfg, langs = load_cfg(workspace)
    base = tmp_path / "base"
    shutil.copytree(workspace["model_dir"], base)

    def parts():
        return fingerprint_parts(cfg, langs, Located("base", None, path=base), "multiway", 7, "c",
                                 "cpu", 1)

    before = parts()
    weights = base / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one weight changes
    weights.write_bytes(bytes(data))
    after = parts()
    assert [k for k in before if before[k] != after[k]] == ["base"]
    assert before["precision"] == "fp32" and len(before["code"]) == 64


def test_trainable_layers_freezes_the_embeddings_and_the_layers_below(workspace):
    from sentence_transformers import SentenceTransformer

    root = workspace["root"] / "top"
    cfg, langs = load_cfg(workspace, max_steps=2, dev_rows=0, trainable_layers=1,
                          output_dir=str(root / "models"), plots_dir=str(root / "plots"),
                          work_dir=str(root / "work"), trunk_dir=str(root / "trunk"))
    metrics = run(cfg, langs, "tiny", "multiway", 7)
    # Layer 0's states of the texts trained on were stored once, for every later run.
    (memo,) = (root / "trunk").iterdir()
    shards = list(memo.iterdir())  # whole shards only (no temporary folder left)
    assert shards and all({f.name for f in shard.iterdir()} == {
        "keys.npy", "offsets.npy", "states.npy"} for shard in shards)
    base = SentenceTransformer(str(workspace["model_dir"]), device="cpu").state_dict()
    new = SentenceTransformer(str(root / "models" / "tiny-multiway-7"), device="cpu").state_dict()
    changed = {k for k in new if not torch.equal(new[k], base[k])}
    assert changed and all(k.startswith("0.model.encoder.layer.1.") for k in changed)
    frozen = [k for k in new if k.startswith(("0.model.embeddings.", "0.model.encoder.layer.0."))]
    assert metrics["frozen_params"] >= sum(new[k].numel() for k in frozen)
    with pytest.raises(ValueError, match="trainable_layers must be between 1 and the encoder's "
                                         "2 layers"):
        run(dataclasses.replace(cfg, trainable_layers=3), langs, "tiny", "multiway", 7)


@pytest.mark.parametrize(("regime", "loss", "columns", "terms"), [
    ("enx_mwloss", "multiway_infonce", 2, {"anchor_eng_Latn", "anchor_x"}),
    ("english", "multiway_infonce", 2, {"anchor_eng_Latn", "anchor_eng_Latn_second"}),
    ("enx_matched", "pivot_infonce", 3, {f"anchor_{c}" for c in COLUMNS}),
    ("xlco", "xlco", 2, {"xlco_src_to_tgt", "xlco_tgt_to_src"}),
    ("xlco_multiway", "xlco", 3, {f"xlco_{c}" for c in COLUMNS}),
])
def test_control_regimes_train_on_the_trunk_memo(workspace, regime, loss, columns, terms):
    # The study profile's controls, end to end through the memo and their losses (the memo's
    # handling of merged columns of other widths: tests/test_trunk.py). XLCo's key encoder is
    # a copy of the model and computes its own lower layers.
    root = workspace["root"] / regime
    cfg, langs = load_cfg(workspace, max_steps=3, dev_rows=0, trainable_layers=1,
                          output_dir=str(root / "models"), plots_dir=str(root / "plots"),
                          work_dir=str(root / "work"), trunk_dir=str(root / "trunk"))
    metrics = run(cfg, langs, "tiny", regime, 7)
    assert metrics["steps"] == 3 and metrics["columns"] == columns
    assert metrics["train_loss_last"] > 0  # a control that learns something has a loss
    meta = read_json(root / "models" / f"tiny-{regime}-7" / "meta.json")
    assert meta["loss"]["name"] == loss and meta["regime"] == regime
    assert terms <= set(read_log(root / "plots" / f"tiny-{regime}-7").columns)


def test_enx_regime_trains_with_the_bilingual_loss_and_frozen_embeddings(workspace):
    from sentence_transformers import SentenceTransformer

    root = workspace["root"] / "enx"
    cfg, langs = load_cfg(workspace, max_steps=2, dev_rows=0, freeze_embeddings=True,
                          output_dir=str(root / "models"), plots_dir=str(root / "plots"),
                          work_dir=str(root / "work"))
    metrics = run(cfg, langs, "tiny", "enx", 7)
    assert metrics["steps"] == 2 and metrics["columns"] == 2
    assert metrics["dev_loss_start"] is None
    base = SentenceTransformer(str(workspace["model_dir"]), device="cpu").state_dict()
    new = SentenceTransformer(str(root / "models" / "tiny-enx-7"), device="cpu").state_dict()
    word = "0.model.embeddings.word_embeddings.weight"
    pooler = [k for k in new if ".pooler." in k]
    assert metrics["frozen_params"] == sum(new[k].numel() for k in [word, *pooler])
    assert all(torch.equal(new[k], base[k]) for k in [word, *pooler])
    changed = [k for k in new if not torch.equal(new[k], base[k])]
    assert "0.model.encoder.layer.0.attention.self.query.weight" in changed
    curve = read_log(root / "plots" / "tiny-enx-7")
    assert {"step", "loss", "src_to_tgt", "tgt_to_src"} <= set(curve.columns)
    meta = read_json(root / "models" / "tiny-enx-7" / "meta.json")
    assert meta["loss"]["name"] == "bilingual_infonce"
    assert meta["corpus"]["train_x_langs"] == {"deu_Latn": 20, "fra_Latn": 20}


def test_stage_cli_errors(workspace, capsys):
    from pipeline.cli import execute
    from stages import train_encoder

    rc = train_encoder.main(["--params", str(workspace["params"]),
                             "--encoder", "tinny", "--regime", "multiway",
                             "--seed", "7"])
    assert rc == 2
    assert "unknown encoder 'tinny'; did you mean 'tiny'?" in capsys.readouterr().err
    with pytest.raises(ValueError, match="stage train_encoder needs --encoder --regime --seed"):
        execute("train_encoder", str(workspace["params"]))
    with pytest.raises(SystemExit):
        train_encoder.main(["--params", str(workspace["params"]), "--encoder", "tiny"])
    cfg, langs = load_cfg(workspace, loss={"multiway": "multiway_infonce"})
    with pytest.raises(ValueError, match="train_encoder.loss has no entry for regime 'enx'"):
        run(cfg, langs, "tiny", "enx", 7)


def test_wasted_gpu_time_and_a_lost_dev_loss_fail_before_training(workspace):
    cfg, langs = load_cfg(workspace, loss={"multiway": "cached_multiway_infonce"},
                          gradient_checkpointing=True)
    with pytest.raises(ValueError, match="gradient_checkpointing with the cached loss "
                                         "cached_multiway_infonce runs three forward passes"):
        run(cfg, langs, "tiny", "multiway", 7)
    cfg, langs = load_cfg(workspace, dev_rows=4)
    with pytest.raises(ValueError, match=r"the dev loss needs 8 rows \(batch_size 8 x 1 "
                                         r"process\(es\)\), but dev_rows is 4 and the dev split "
                                         r"has 16"):
        run(cfg, langs, "tiny", "multiway", 7)
