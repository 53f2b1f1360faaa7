"""Downstream transfer: loss terms on small tensors, the split encoder, tasks and tiny runs.

Everything runs on a tiny random BERT (2 layers, width 32) with a word-level tokenizer built
here from the fixture sentences, on synthetic Bible-shaped tables, a tiny ``bible.db`` and
tiny local stand-ins of the hub tasks (PAWS-X, XNLI, TyDiQA-GoldP) with the hub schema.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sqlite3

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.config import LangsConfig, from_mapping
from pipeline.downstream import data as D
from pipeline.downstream import evaluate_downstream, tokens, train_drmim
from pipeline.downstream import losses as L
from pipeline.downstream import train as downstream_train
from pipeline.downstream.encoder import (
    FeatureStore,
    TopBlock,
    load_encoder,
    pad_batch,
    stack_features,
)
from pipeline.downstream.evaluate_downstream import (
    EvaluateDownstreamConfig,
    qa_scores,
    subset_group,
    summarize,
)
from pipeline.downstream.knobs import DrmimConfig
from pipeline.downstream.methods import CorpusBatch, TaskBatch, parse_variant
from pipeline.downstream.train_drmim import TrainDrmimConfig
from pipeline.live import read_log

torch.set_num_threads(1)

LANGS = LangsConfig(source="eng_Latn", pool=("deu_Latn",))
# Book → genre keyword (books 1 law, 19 wisdom, 40 gospels, 45 epistles).
BOOKS = {1: "commandment", 19: "song", 40: "parable", 45: "letter"}
FILLER = "and the people went to city with bread water house light day night king".split()


def translate(text: str, lang: str) -> str:
    """A word-by-word 'translation': language-specific tokens, same structure."""
    return " ".join(f"{lang[:2]}{w}" for w in text.split()) if lang != "eng_Latn" else text


def verse(book: int, chapter: int, v: int, edition: str = "a") -> str:
    rng = np.random.default_rng(book * 10000 + chapter * 100 + v)
    words = list(rng.choice(FILLER, size=5)) + [BOOKS[book]]
    rng.shuffle(words)
    if edition == "b":  # a second edition: same verse, reworded
        words = ["indeed", *words[::-1]]
    return " ".join(words)


def bible_table(chapters: range, langs=("eng_Latn", "deu_Latn", "kor_Hang")) -> pd.DataFrame:
    rows = []
    for book in BOOKS:
        for ch in chapters:
            for v in range(1, 9):
                en = verse(book, ch, v)
                rows.append({"id": f"{book:02d}.{ch:03d}.{v:03d}", "book": book, "chapter": ch,
                             "verse": v, **{lang: translate(en, lang) for lang in langs}})
    return pd.DataFrame(rows)


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """Tiny encoder directory, Bible tables, bible.db, corpus and hub stand-ins."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("downstream")
    source, test = bible_table(range(1, 4)), bible_table(range(4, 6))
    source.to_parquet(root / "bible_source.parquet", index=False)
    test.to_parquet(root / "bible_test.parquet", index=False)
    corpus = source[["id", "eng_Latn", "deu_Latn"]].assign(split="train")
    corpus.to_parquet(root / "multiway.parquet", index=False)

    # bible.db with two editions of English (4 = WEB, k = KJV) and German (e, s).
    db = root / "bible.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE bible (bbName TEXT, bNumber INT, cNumber INT, vNumber INT, "
                "vText TEXT)")
    for letter, lang, edition in (("4", "eng_Latn", "a"), ("k", "eng_Latn", "b"),
                                  ("e", "deu_Latn", "a"), ("s", "deu_Latn", "b")):
        con.executemany("INSERT INTO bible VALUES (?, ?, ?, ?, ?)", [
            (letter, b, c, v, translate(verse(b, c, v, edition), lang))
            for b in BOOKS for c in range(1, 6) for v in range(1, 9)
        ])
    con.commit()
    con.close()

    # PAWS-X and TyDiQA-GoldP stand-ins, hub schema, <dir>/<config>/<split>.jsonl.
    hub = root / "pawsx"
    for cfg_name, lang in (("en", "eng_Latn"), ("de", "deu_Latn")):
        (hub / cfg_name).mkdir(parents=True)
        for split, n in (("train", 40), ("validation", 8), ("test", 12)):
            recs = [{"id": i, "sentence1": translate(verse(1, 1 + i % 3, 1 + i % 8), lang),
                     "sentence2": translate(verse(1, 1 + i % 3, 1 + (i + i % 2) % 8), lang),
                     "label": int(i % 2 == 0)} for i in range(n)]
            pd.DataFrame(recs).to_json(hub / cfg_name / f"{split}.jsonl", orient="records",
                                       lines=True)
    xnli = root / "xnli"  # premise/hypothesis/label (3 classes), rows aligned by order
    for cfg_name, lang in (("en", "eng_Latn"), ("de", "deu_Latn")):
        (xnli / cfg_name).mkdir(parents=True)
        for split, n in (("train", 48), ("validation", 9), ("test", 12)):
            recs = [{"premise": translate(verse(45, 1 + i % 3, 1 + i % 8), lang),
                     "hypothesis": translate(verse(45, 1 + i % 3, 1 + (i + i % 3) % 8), lang),
                     "label": i % 3} for i in range(n)]
            pd.DataFrame(recs).to_json(xnli / cfg_name / f"{split}.jsonl", orient="records",
                                       lines=True)
    qa = root / "tydiqa" / "secondary_task"
    qa.mkdir(parents=True)
    for split, prefixes in (("train", ["english"] * 24 + ["arabic"] * 4),
                            ("validation", ["english"] * 6 + ["korean"] * 6)):
        recs = []
        for i, prefix in enumerate(prefixes):
            context = " ".join(verse(19, 1 + i % 3, 1 + k) for k in range(6))
            answer = BOOKS[19]
            recs.append({"id": f"{prefix}-{i}", "title": "t", "question": f"which song {i % 4}",
                         "context": context,
                         "answers": {"text": [answer], "answer_start": [context.index(answer)]}})
        pd.DataFrame(recs).to_json(qa / f"{split}.jsonl", orient="records", lines=True)

    # Tiny encoder: word-level tokenizer over every fixture word, random 2-layer BERT, saved
    # as a sentence-transformers directory (HF files at the root, E5-style prompt).
    words = set("query : which song 0 1 2 3 indeed".split()) | set(FILLER) | set(BOOKS.values())
    for lang in ("deu_Latn", "kor_Hang"):
        words |= {f"{lang[:2]}{w}" for w in list(words)}
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    vocab = {w: i for i, w in enumerate(specials + sorted(words))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]",
                                  pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]")
    enc_dir = root / "tiny-encoder"
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=64,
                                 max_position_embeddings=128, pad_token_id=0))
    model.save_pretrained(enc_dir)
    tok.save_pretrained(enc_dir)
    (enc_dir / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "",
         "type": "sentence_transformers.base.modules.transformer.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.sentence_transformer.modules.pooling.Pooling"},
    ]))
    (enc_dir / "1_Pooling").mkdir()
    (enc_dir / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "mean"}))
    (enc_dir / "config_sentence_transformers.json").write_text(json.dumps(
        {"prompts": {"query": "query: "}, "default_prompt_name": "query"}))
    return root


def tiny_cfg(world, **kw) -> TrainDrmimConfig:
    base = dict(
        bible_source=str(world / "bible_source.parquet"),
        bible_test=str(world / "bible_test.parquet"), bible_db=str(world / "bible.db"),
        corpus=str(world / "multiway.parquet"), max_train_examples=64, max_test_examples=16,
        dev_examples=8,
        max_corpus_rows=32, max_length=24, doc_stride=4, batch_size=16, epochs=3, lr=1e-3,
        head_lr=1e-2, seeds=(0,), threads=1, eval_batch_size=32, models_dir=str(world),
        trunk_layers=0, tasks=("bible_genre", "bible_paraphrase"), methods=(
            "finetune", "drmim", "drmim-no_mi", "drmim-no_disentangle", "drmim-no_tie",
            "drmim-no_disentangle-no_mi", "epar"),
        output_dir=str(world / "runs"), work_dir=str(world / "work"),
        plots_dir=str(world / "plots"),
        drmim=DrmimConfig(universal_dim=16, specific_dim=8, critic_dim=8, corpus_rows=4),
    )
    base.update(kw)
    return TrainDrmimConfig(**base)


def load_task(name: str, cfg: TrainDrmimConfig) -> D.TaskData:
    """``D.load_task`` given the fields of ``cfg`` it reads."""
    fields = ("bible_source", "bible_test", "bible_db", "dataset", "languages",
              "max_train_examples", "max_test_examples", "dev_examples", "data_seed")
    return D.load_task(name, **{f: getattr(cfg, f) for f in fields})


def method_knobs(cfg: TrainDrmimConfig) -> dict:
    """The fields of ``cfg`` a method's ``Variant.build`` reads."""
    return {"dropout": cfg.dropout, "drmim": cfg.drmim, "epar": cfg.epar}


def train_and_score(world, cfg: TrainDrmimConfig, task: str = "bible_genre",
                    figure: str = "pca") -> tuple[dict, dict]:
    """Both stages on the tiny encoder: ``train_drmim``'s and ``evaluate_downstream``'s metrics."""
    trained = train_drmim.run(cfg, LANGS, task, "tiny-encoder")
    scoring = EvaluateDownstreamConfig(runs_dir=cfg.output_dir, figure=figure,
                                       output_dir=str(world / "scores"))
    scored = evaluate_downstream.run(scoring, LANGS, task, "tiny-encoder")
    return trained, scored


# ----------------------------------------------------------------------------- loss terms


def test_grad_reverse_flips_and_scales_the_gradient():
    x = torch.randn(3, 4, requires_grad=True)
    w = torch.randn(3, 4)
    y = L.grad_reverse(x, 0.5)
    assert torch.equal(y, x)
    (y * w).sum().backward()
    assert torch.allclose(x.grad, -0.5 * w)


def test_infonce_and_jsd_match_brute_force():
    scores = torch.randn(5, 5)
    t, n = scores.tolist(), 5
    nce = sum(t[i][i] - math.log(sum(math.exp(t[i][j]) for j in range(n))) for i in range(n))
    assert L.infonce_bound(scores).item() == pytest.approx(nce / n + math.log(n), abs=1e-5)

    def sp(x):
        return math.log1p(math.exp(x))

    joint = sum(-sp(-t[i][i]) for i in range(n)) / n
    marg = sum(sp(t[i][j]) for i in range(n) for j in range(n) if i != j) / (n * n - n)
    assert L.jsd_bound(scores).item() == pytest.approx(joint - marg + math.log(4), abs=1e-5)


@pytest.mark.parametrize("estimator", ["infonce", "jsd"])
def test_mi_bound_rises_on_dependent_and_stays_near_zero_on_independent(estimator):
    bound = L.MI_BOUNDS[estimator]
    gen = torch.Generator().manual_seed(0)
    mix = torch.randn(6, 3, generator=gen)

    def draw(dependent: bool, n: int = 128):
        u = torch.randn(n, 6, generator=gen)
        o = u @ mix if dependent else torch.randn(n, 3, generator=gen)
        return u, o + 0.1 * torch.randn(n, 3, generator=gen)

    results = {}
    for dependent in (True, False):
        torch.manual_seed(0)
        critic = L.SeparableCritic(6, 3, 16)
        opt = torch.optim.Adam(critic.parameters(), lr=1e-2)
        for _ in range(150):
            u, o = draw(dependent)
            loss = -bound(critic(u, o))
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():  # fresh samples: no credit for memorising a batch
            results[dependent] = float(np.mean([bound(critic(*draw(dependent))).item()
                                                for _ in range(5)]))
    assert results[True] > 1.0
    assert abs(results[False]) < 0.1


def test_decorrelation_is_the_mean_squared_pearson_correlation():
    a = torch.tensor([[1.0], [-1.0], [1.0], [-1.0]])
    b = torch.tensor([[1.0], [1.0], [-1.0], [-1.0]])
    assert L.decorrelation(a, b).item() == pytest.approx(0.0, abs=1e-6)
    assert L.decorrelation(a, 3 * a + 1).item() == pytest.approx(1.0, abs=1e-4)
    u, s = torch.randn(50, 3), torch.randn(50, 2)
    s[:, 0] += u[:, 1]
    ref = np.corrcoef(u.numpy().T, s.numpy().T)[:3, 3:]
    assert L.decorrelation(u, s).item() == pytest.approx(float((ref**2).mean()), abs=1e-4)


def test_parallel_tie_is_multiway_infonce_between_translations():
    u = torch.randn(6, 4)
    rows = torch.tensor([0, 0, 0, 1, 1, 1])  # 2 rows × 3 translations
    z = torch.nn.functional.normalize(u, dim=-1)
    s = (z @ z.T / 0.1).tolist()
    ref = []
    for a in range(6):
        negatives = [s[a][k] for k in range(6) if rows[k] != rows[a]]
        for p in range(6):
            if p != a and rows[p] == rows[a]:
                ref.append(-s[a][p] + math.log(math.exp(s[a][p])
                                               + sum(math.exp(x) for x in negatives)))
    assert L.parallel_tie(u, rows, 0.1).item() == pytest.approx(float(np.mean(ref)), abs=1e-5)
    # Aligned translations (same vector per row, rows far apart) score lower than shuffled.
    aligned = torch.eye(4)[[0, 0, 0, 1, 1, 1]] + 0.01 * torch.randn(6, 4)
    assert L.parallel_tie(aligned, rows, 0.1) < L.parallel_tie(aligned[[0, 3, 1, 4, 2, 5]],
                                                               rows, 0.1)
    with pytest.raises(ValueError, match="2 or more consecutive sentences per row"):
        L.parallel_tie(u[:5], rows[:5])


def test_attention_pull_is_masked_kl_and_only_moves_the_perturbed_pass():
    gen = torch.Generator().manual_seed(1)
    clean = torch.randn(2, 2, 3, 3, generator=gen).softmax(-1).requires_grad_(True)
    logits = torch.randn(2, 2, 3, 3, generator=gen, requires_grad=True)
    pert = logits.softmax(-1)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert L.attention_pull([clean], [clean], mask).item() == pytest.approx(0.0, abs=1e-6)
    value = L.attention_pull([clean], [pert], mask)
    p, q = clean.detach().numpy(), pert.detach().numpy()
    kls = [np.sum(p[b, h, i] * np.log(p[b, h, i] / q[b, h, i]))
           for b in range(2) for h in range(2) for i in range(3) if mask[b, i]]
    assert value.item() == pytest.approx(float(np.mean(kls)), abs=1e-5)
    value.backward()
    assert clean.grad is None and logits.grad.abs().sum() > 0


def test_robust_targets_mix_gold_and_clean_prediction():
    labels = torch.tensor([0, 2])
    logits = torch.randn(2, 3)
    assert torch.allclose(L.robust_targets(labels, logits, 0.0),
                          torch.nn.functional.one_hot(labels, 3).float())
    assert torch.allclose(L.robust_targets(labels, logits, 1.0), logits.softmax(-1))
    mixed = L.robust_targets(labels, logits, 0.3)
    assert torch.allclose(mixed.sum(-1), torch.ones(2))
    assert L.soft_cross_entropy(logits, torch.nn.functional.one_hot(labels, 3).float()).item() \
        == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), abs=1e-6)


def test_embedding_push_has_the_radius_and_moves_away_from_the_centroid():
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(4, 5, 8, generator=gen)
    mask = torch.ones(4, 5, dtype=torch.long)
    mask[1, 3:] = 0
    w = torch.randn(8, 8, generator=gen)

    def pooled(x):
        return (x @ w).mean(1)

    centroid = pooled(h).mean(0)
    pushed = L.embedding_push(pooled, h, mask, centroid, 0.2, torch.Generator().manual_seed(1))
    noise = L.embedding_push(pooled, h, mask, centroid, 0.2, torch.Generator().manual_seed(1),
                             follow_gradient=False)
    for delta in (pushed, noise):
        norms = delta.norm(dim=-1)
        expected = 0.2 * L.token_rms(h).squeeze(-1) * mask
        assert torch.allclose(norms, expected, atol=1e-5)
    dist = {name: (pooled(h + d) - centroid).norm(dim=-1).mean().item()
            for name, d in (("pushed", pushed), ("noise", noise), ("none", 0 * h))}
    assert dist["pushed"] > dist["noise"] and dist["pushed"] > dist["none"]


# ----------------------------------------------------------------------------- encoder


def test_top_block_on_frozen_features_equals_the_full_model(world):
    enc = load_encoder(world / "tiny-encoder")
    assert enc.prefix == "query: " and enc.pooling == "mean"
    texts = [("query: song and king",), ("query: letter the people went to the city",)]
    seqs = tokens.encode_texts(texts, dataclasses.replace(enc, prefix=""), 24)
    ids, _, mask = pad_batch(seqs, enc.tokenizer.pad_token_id)
    with torch.no_grad():
        ref = enc.model(input_ids=ids, attention_mask=mask, output_attentions=True)
    for k in (1, 2):
        store = FeatureStore(enc, k)
        top = TopBlock(enc, k).eval()
        h, m = store.get(seqs)
        with torch.no_grad():
            states, maps = top(h, m, attentions=True)
        real = mask.bool()
        assert torch.allclose(states[real], ref.last_hidden_state[real], atol=1e-5)
        assert len(maps) == k
        for b in range(len(seqs)):  # real query rows (padding rows are never read)
            assert torch.allclose(maps[-1][b][:, real[b]], ref.attentions[-1][b][:, real[b]],
                                  atol=1e-5)
        assert store.add(seqs) == 0  # cached by the first get
    with pytest.raises(ValueError, match="trainable_layers must be between 1 and the encoder's 2"):
        FeatureStore(enc, 3)


def test_features_read_from_the_trunk_memo_equal_the_computed_ones(world, tmp_path):
    enc = load_encoder(world / "tiny-encoder")
    seqs = tokens.encode_texts([("song and king",), ("letter the people went to the city",)],
                          enc, 24)
    ids = seqs[1][0]  # a BERT-style pair: its second segment has token type 1
    seqs.append((ids, tuple(int(i >= len(ids) // 2) for i in range(len(ids)))))
    plain = stack_features(FeatureStore(enc, 1).compute(seqs))
    for _ in range(2):  # cold: the memo stores the untyped texts; warm: reads them back
        with FeatureStore(enc, 1, trunk_layers=1, trunk_dir=tmp_path) as store:
            got = store.get(seqs)
    assert (store.memo.hits, store.memo.misses) == (2, 0)
    assert torch.allclose(got[0], plain[0], atol=1e-5) and torch.equal(got[1], plain[1])
    ids, types, mask = pad_batch(seqs, enc.tokenizer.pad_token_id)
    with torch.no_grad():  # the encoder runs all its layers again once the store is closed
        full = enc.model(input_ids=ids, token_type_ids=types, attention_mask=mask)
    assert full.last_hidden_state.shape == plain[0].shape
    assert not torch.allclose(full.last_hidden_state[mask.bool()], plain[0][mask.bool()])
    with pytest.raises(ValueError, match="trunk_layers must be between 0 and the 1 frozen"):
        FeatureStore(enc, 1, trunk_layers=2, trunk_dir=tmp_path)


def _kernels(block: torch.nn.Module) -> list[str]:
    """The attention kernel of every self-attention call ``block`` makes from now on."""
    calls: list[str] = []
    for module in block.modules():
        if type(module).__name__.endswith("SelfAttention"):
            module.register_forward_pre_hook(
                lambda m, args: calls.append(m.config._attn_implementation))
    return calls


def test_attention_is_sdpa_on_a_gpu_and_eager_where_probabilities_are_read(world, monkeypatch):
    from pipeline.downstream import encoder as E

    assert E.attention_implementation("cuda") == "sdpa"
    assert E.attention_implementation("cpu") == "eager"  # the committed results' kernel
    cpu = load_encoder(world / "tiny-encoder")
    assert cpu.model.config._attn_implementation == "eager" and cpu.dtype is None
    monkeypatch.setattr(E, "attention_implementation", lambda device: "sdpa")  # a GPU's choice
    enc = load_encoder(world / "tiny-encoder")
    assert enc.model.config._attn_implementation == "sdpa"
    seqs = tokens.encode_texts([("song and king",), ("letter the people went to the city",)],
                          enc, 24)
    h, m = FeatureStore(enc, 1).get(seqs)  # the frozen layer runs SDPA
    real = m.bool()
    assert torch.allclose(h[real], FeatureStore(cpu, 1).get(seqs)[0][real], atol=1e-5)
    top = TopBlock(enc, 1).eval()
    calls = _kernels(top)
    with torch.no_grad():
        states, maps = top(h, m)
        assert calls == ["sdpa"] and maps == []
        calls.clear()
        eager_states, maps = top(h, m, attentions=True)  # probabilities: this pass is eager
        assert calls == ["eager"] and len(maps) == 1
    assert torch.allclose(maps[0].sum(-1), torch.ones(()), atol=1e-5)
    assert torch.allclose(states[real], eager_states[real], atol=1e-5)
    # Back to SDPA after the eager pass; the encoder's own layers were never switched.
    assert {c._attn_implementation for c in top._configs} == {"sdpa"}
    assert enc.model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("variant, kernels", [
    ("finetune", ["sdpa"]),
    ("drmim", ["sdpa", "sdpa"]),                   # English batch, corpus batch
    ("epar", ["eager", "sdpa", "eager"]),          # clean pass, push, pushed pass
    ("epar-no_pull", ["sdpa", "sdpa", "sdpa"]),    # no attention pulled: no eager pass
])
def test_only_epars_attention_pull_computes_attention_eagerly(world, monkeypatch, variant,
                                                              kernels):
    from pipeline.downstream import encoder as E

    monkeypatch.setattr(E, "attention_implementation", lambda device: "sdpa")
    enc, batch, corpus = _batches(world)
    model = parse_variant(variant).build(TopBlock(enc, 1), "classification", 4,
                                         **method_knobs(tiny_cfg(world)), n_langs=2)
    calls = _kernels(model.top)
    model.losses(batch, corpus, torch.Generator().manual_seed(0))
    assert calls == kernels


def test_a_bf16_encoder_autocasts_its_layers_and_nothing_else(world):
    enc = load_encoder(world / "tiny-encoder")
    bf16 = dataclasses.replace(enc, dtype=torch.bfloat16)  # what a GPU with bf16 gets
    seqs = tokens.encode_texts([(verse(b, 1, v),) for b in BOOKS for v in (1, 2)], enc, 24)
    autocast_on: list[bool] = []

    def record(module, args):
        autocast_on.append(torch.is_autocast_enabled("cpu"))

    hook = enc.model.encoder.layer[0].register_forward_pre_hook(record)
    plain, _ = FeatureStore(enc, 1).get(seqs)
    h, mask = FeatureStore(bf16, 1).get(seqs)
    hook.remove()
    assert autocast_on == [False, True] and h.dtype == torch.float32
    assert not torch.equal(h, plain) and torch.allclose(h, plain, atol=0.1)

    model = parse_variant("epar").build(TopBlock(bf16, 1), "classification", 4,
                                        **method_knobs(tiny_cfg(world)), n_langs=0)
    autocast_on.clear()
    model.top.layers[0].register_forward_pre_hook(record)
    batch = TaskBatch(h, mask, labels=torch.arange(len(seqs)) % 4)
    terms = model.losses(batch, None, torch.Generator().manual_seed(0))
    assert autocast_on == [True, True, True]  # clean, push and pushed passes
    assert not torch.is_autocast_enabled("cpu")  # the heads and losses ran outside it
    assert all(t.dtype == torch.float32 and torch.isfinite(t) for t in terms.values())
    sum(terms.values()).backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32
               for p in model.top.parameters())


def test_missing_encoder_directory_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="encoder directory not found"):
        load_encoder(tmp_path / "nope")


# ----------------------------------------------------------------------------- methods


def test_variant_names_and_errors():
    assert parse_variant("drmim-no_tie-no_mi").name == "drmim-no_mi-no_tie"
    assert parse_variant("drmim-no_disentangle").uses_corpus
    assert not parse_variant("drmim-no_disentangle-no_mi-no_tie").uses_corpus
    assert not parse_variant("epar").uses_corpus
    with pytest.raises(ValueError, match="unknown downstream method 'drmin'.*known: finetune"):
        parse_variant("drmin")
    with pytest.raises(ValueError, match="cannot switch 'no_pull' for drmim.*no_disentangle"):
        parse_variant("drmim-no_pull")


def _batches(world, kind="classification"):
    enc = load_encoder(world / "tiny-encoder")
    store = FeatureStore(enc, 1)
    task_seqs = tokens.encode_texts([(verse(b, 1, v),) for b in BOOKS for v in (1, 2)], enc, 24)
    h, mask = store.get(task_seqs)
    batch = TaskBatch(h, mask, labels=torch.arange(len(task_seqs)) % 4)
    if kind == "qa":
        batch = TaskBatch(h, mask, starts=torch.ones(len(task_seqs), dtype=torch.long),
                          ends=torch.full((len(task_seqs),), 2))
    c_seqs = tokens.encode_texts([(translate(verse(1, 2, v), lang),) for v in (1, 2, 3)
                             for lang in ("eng_Latn", "deu_Latn")], enc, 24)
    ch, cmask = store.get(c_seqs)
    corpus = CorpusBatch(ch, cmask, torch.tensor([0, 1] * 3), torch.tensor([0, 0, 1, 1, 2, 2]))
    return enc, batch, corpus


@pytest.mark.parametrize("kind", ["classification", "qa"])
def test_switching_a_part_off_removes_exactly_its_terms(world, kind):
    enc, batch, corpus = _batches(world, kind)
    cfg = tiny_cfg(world)
    groups = {"disentangle": {"lang", "adversary", "decorrelation"}, "mi": {"mi"},
              "tie": {"tie"}}

    def terms(name):
        torch.manual_seed(0)
        model = parse_variant(name).build(TopBlock(enc, 1), kind, 4, **method_knobs(cfg),
                                          n_langs=2).eval()
        out = model.losses(batch, corpus, torch.Generator().manual_seed(0))
        return {k: v.item() for k, v in out.items()}

    full = terms("drmim")
    assert set(full) == {"task"} | set().union(*groups.values())
    for part, removed in groups.items():
        ablated = terms(f"drmim-no_{part}")
        assert set(ablated) == set(full) - removed
        for k in ablated:  # what is left is computed exactly as in the full method
            assert ablated[k] == pytest.approx(full[k], abs=1e-6), (part, k)
    assert set(terms("finetune")) == {"task"}
    epar = terms("epar")
    assert set(epar) == {"task", "virtual", "pull"}
    assert set(terms("epar-no_pull")) == {"task", "virtual"}
    for part in ("push", "robust"):  # change how 'virtual' is made, keep the clean term
        ablated = terms(f"epar-no_{part}")
        assert set(ablated) == set(epar) and ablated["task"] == pytest.approx(epar["task"])
        assert ablated["virtual"] != pytest.approx(epar["virtual"])


def test_drmim_without_corpus_batches_is_refused(world):
    enc, batch, _ = _batches(world)
    model = parse_variant("drmim").build(TopBlock(enc, 1), "classification", 4,
                                         **method_knobs(tiny_cfg(world)),
                                         n_langs=2)
    with pytest.raises(ValueError, match="needs corpus batches"):
        model.losses(batch)


# ----------------------------------------------------------------------------- data


def test_bible_genre_task_trains_on_english_and_tests_every_language(world):
    task = load_task("bible_genre", tiny_cfg(world))
    assert task.kind == "classification" and len(task.label_names) == 8
    assert list(task.test) == ["eng_Latn", "deu_Latn", "kor_Hang"]
    assert len(task.train) == 64 and len(task.test["deu_Latn"]) == 16
    # The same verses (and labels) in every language; English training text is English.
    assert task.test["deu_Latn"].inputs[0][0] == translate(task.test["eng_Latn"].inputs[0][0],
                                                           "deu_Latn")
    assert all(not w.startswith(("de", "ko")) for (t,) in task.train.inputs for w in t.split())
    assert sorted(set(task.train.labels)) == [0, 2, 4, 6]  # law, wisdom, gospels, epistles
    # The English dev split comes from other chapters of the training source.
    source = pd.read_parquet(world / "bible_source.parquet")
    chapter = dict(zip(source.eng_Latn, zip(source.book, source.chapter)))
    dev_chapters = {chapter[t] for (t,) in task.dev.inputs}
    assert dev_chapters and not dev_chapters & {chapter[t] for (t,) in task.train.inputs}
    assert set(task.dev.labels) <= set(range(8)) and "dev" in task.scored()
    assert load_task("bible_genre", tiny_cfg(world, dev_examples=0)).dev is None
    only = load_task("bible_genre", tiny_cfg(world, languages=("kor_Hang",)))
    assert list(only.test) == ["eng_Latn", "kor_Hang"]


def test_bible_paraphrase_pairs_within_and_across_languages(world):
    task = load_task("bible_paraphrase", tiny_cfg(world))
    assert task.kind == "pair"
    assert set(task.test) == {"eng_Latn", "deu_Latn", "eng_Latn-deu_Latn", "eng_Latn-kor_Hang"}
    test = pd.read_parquet(world / "bible_test.parquet")
    split = task.test["deu_Latn"]
    assert sum(split.labels) == len(split) // 2
    for (a, b), label in zip(split.inputs, split.labels):
        row = test[test.deu_Latn == a].iloc[0]
        same = translate(verse(row.book, row.chapter, row.verse, "b"), "deu_Latn")
        assert (b == same) == bool(label)
    cross = task.test["eng_Latn-kor_Hang"]
    assert cross.labels == split.labels
    first = cross.inputs[0][0]
    assert first in set(test.eng_Latn) and cross.inputs[0][1] in set(test.kor_Hang)
    (a, b), label = task.train.inputs[0], task.train.labels[0]
    assert b.startswith("indeed") and a in set(pd.read_parquet(world / "bible_source.parquet")
                                               .eng_Latn)


def test_hub_pair_standin_aligns_examples_across_languages(world, tmp_path):
    task = load_task("pawsx", tiny_cfg(world, dataset=str(world / "pawsx")))
    assert set(task.test) == {"eng_Latn", "deu_Latn", "eng_Latn-deu_Latn"}
    en, de, cross = (task.test[k] for k in ("eng_Latn", "deu_Latn", "eng_Latn-deu_Latn"))
    assert de.inputs[0] == tuple(translate(t, "deu_Latn") for t in en.inputs[0])
    assert cross.inputs[0] == (en.inputs[0][0], de.inputs[0][1])
    # The English dev split is the English validation split (label-stratified), never a test.
    assert len(task.dev) == 8 and sorted(task.dev.labels) == [0] * 4 + [1] * 4
    assert set(task.scored()) == set(task.test) | {"dev"}
    nodev = shutil.copytree(world / "pawsx", tmp_path / "pawsx")
    (nodev / "en" / "validation.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="en has no validation.jsonl"):
        load_task("pawsx", tiny_cfg(world, dataset=str(nodev)))
    assert load_task("pawsx", tiny_cfg(world, dataset=str(nodev), dev_examples=0)).dev is None
    with pytest.raises(FileNotFoundError, match="has no English config of xnli"):
        load_task("xnli", tiny_cfg(world, dataset=str(world / "tydiqa")))
    with pytest.raises(FileNotFoundError, match="needs the Hugging Face hub"):
        D.load_rows("no-such-org/no-such-dataset", "en", "train")


def test_qa_windows_hold_the_answer_and_metrics(world):
    cfg = tiny_cfg(world, dataset=str(world / "tydiqa"), max_length=20,
                   doc_stride=6)
    task = load_task("tydiqa", cfg)
    assert set(task.test) == {"eng_Latn", "kor_Hang"}
    # English training questions only: 8 held out as the dev split, the other 16 trained on.
    assert len(task.train) == 16 and len(task.dev) == 8
    with pytest.raises(ValueError, match="all taken by dev_examples"):
        load_task("tydiqa", tiny_cfg(world, dataset=str(world / "tydiqa"), dev_examples=24))
    enc = load_encoder(world / "tiny-encoder")
    train = tokens.encode_split(task.train, "qa", enc, cfg.max_length, cfg.doc_stride,
                                train=True)
    assert train.seqs and len(set(train.example)) == len(task.train)
    for offsets, s, e, ex in zip(train.offsets, train.starts, train.ends, train.example):
        context = task.train.inputs[ex][1]
        assert context[offsets[s][0]:offsets[e][1]] == task.train.answers[ex][0]
    test = tokens.encode_split(task.test["kor_Hang"], "qa", enc, cfg.max_length,
                               cfg.doc_stride, train=False)
    assert len(test.seqs) > len(task.test["kor_Hang"])  # long contexts → several windows
    assert qa_scores("The Song!", ["song"]) == (1.0, 1.0)
    f1, em = qa_scores("a long song", ["song of songs"])
    assert em == 0.0 and f1 == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))


def test_config_errors(world):
    with pytest.raises(ValueError, match="unknown downstream task 'genre'.*bible_genre"):
        load_task("genre", tiny_cfg(world))
    with pytest.raises(ValueError, match=r"doc_stride must be in \[0, max_length / 2 - 2\)"):
        tiny_cfg(world, max_length=24, doc_stride=12)
    with pytest.raises(ValueError, match="corpus_langs must be at least 2"):
        tiny_cfg(world, drmim=DrmimConfig(corpus_langs=1))
    cfg = from_mapping(TrainDrmimConfig, {"drmim": {"w_mi": 0.5}, "methods": ["finetune"]})
    assert cfg.drmim.w_mi == 0.5 and cfg.methods == ("finetune",)
    with pytest.raises(ValueError, match="unknown key 'w_mii'"):
        from_mapping(TrainDrmimConfig, {"drmim": {"w_mii": 0.5}})
    with pytest.raises(FileNotFoundError, match="run `dvc repro build_corpus`"):
        train_drmim.run(tiny_cfg(world, corpus=str(world / "none.parquet")), LANGS, "bible_genre",
                  "tiny-encoder")


def test_summary_groups_and_spreads():
    scores = pd.DataFrame([
        {"variant": "v", "seed": s, "subset": sub, "metric": "accuracy", "value": val}
        for s, vals in ((0, (90, 50, 30, 40)), (1, (80, 70, 50, 20)))
        for sub, val in zip(("eng_Latn", "deu_Latn", "ita_Latn", "eng_Latn-deu_Latn"), vals)
    ])
    m = summarize(scores, LANGS)
    assert m["v/accuracy/deu_Latn"] == 60 and m["v/accuracy/deu_Latn/std"] == pytest.approx(
        np.std([50, 70], ddof=1), abs=1e-3)
    assert m["v/accuracy/zero_shot"] == pytest.approx(np.mean([40, 140 / 3]), abs=1e-3)
    assert m["v/accuracy/seen"] == pytest.approx(45.0)  # deu and eng-deu
    assert m["v/accuracy/unseen"] == pytest.approx(40.0)  # ita
    assert subset_group("eng_Latn", LANGS) == "source"


# ----------------------------------------------------------------------------- tiny runs


def test_scores_from_predictions():
    preds = pd.DataFrame([
        {"variant": "v", "seed": 0, "subset": "deu_Latn", "example": k, "prediction": p,
         "gold": g} for k, (p, g) in enumerate(((1, 1), (0, 1), (2, 2), (3, 0)))
    ])
    scores = evaluate_downstream.score_predictions(preds, "classification")
    assert scores.to_dict("records") == [{"variant": "v", "seed": 0, "subset": "deu_Latn",
                                          "metric": "accuracy", "value": 50.0}]
    qa = pd.DataFrame([{"variant": "v", "seed": 0, "subset": "kor_Hang", "example": 0,
                        "prediction": "the song", "gold": ["song", "psalm"]},
                       {"variant": "v", "seed": 0, "subset": "kor_Hang", "example": 1,
                        "prediction": "", "gold": ["letter"]}])
    values = evaluate_downstream.score_predictions(qa, "qa").set_index("metric").value
    assert values["f1"] == 50.0 and values["exact_match"] == 50.0


def test_variant_intervals_against_finetune_are_paired_per_example():
    # 40 examples in German (seen) and Italian (unseen), 2 seeds: "better" is right wherever
    # finetune is, plus every fourth example finetune misses; "same" predicts what finetune does.
    rows = []
    for seed in (0, 1):
        for subset in ("eng_Latn", "deu_Latn", "ita_Latn"):
            for k in range(40):
                ft = int(k % 3 != 0)
                for variant, correct in (("finetune", ft), ("same", ft),
                                         ("better", max(ft, int(k % 4 == 0)))):
                    rows.append({"variant": variant, "seed": seed, "subset": subset,
                                 "example": k, "prediction": correct, "gold": 1})
    items = evaluate_downstream.item_scores(pd.DataFrame(rows), "classification")
    out = evaluate_downstream.versus_finetune(items, LANGS)
    # finetune misses k = 0, 3, ..., 39 (14 of 40); "better" recovers k % 12 == 0 (4 of 40).
    assert out["better/accuracy/zero_shot/vs_finetune"] == pytest.approx(10.0)
    assert out["better/accuracy/seen/vs_finetune"] == pytest.approx(10.0)
    assert 0 < out["better/accuracy/zero_shot/vs_finetune/low"] < 10.0
    assert out["same/accuracy/unseen/vs_finetune"] == 0.0
    assert out["same/accuracy/unseen/vs_finetune/low"] == 0.0 == out[
        "same/accuracy/unseen/vs_finetune/high"]
    assert not any(k.startswith("finetune/") for k in out)
    assert not any("/eng_Latn" in k or "source" in k for k in out)


def test_every_method_trains_and_predicts_on_the_bible_genre_task(world):
    cfg = tiny_cfg(world, methods=("finetune", "drmim", "drmim-no_mi", "drmim-no_disentangle",
                                   "drmim-no_tie", "epar", "epar-no_push"), seeds=(0, 1),
                   epochs=8)
    trained, metrics = train_and_score(world, cfg)
    runs_dir = world / "runs" / "bible_genre" / "tiny-encoder"
    runs = json.loads((runs_dir / "runs.json").read_text())
    assert len(runs) == trained["runs"] == 14
    for run in runs:
        assert run["last_loss"] < run["first_loss"], run["variant"]
    # The DVCLive log: each run's mean loss and terms at the end of each of the 8 epochs.
    log = read_log(world / "plots" / "bible_genre" / "tiny-encoder")
    steps_per_epoch = runs[0]["steps"] // 8
    assert log["step"].tolist() == [steps_per_epoch * (e + 1) for e in range(8)]
    for run in runs:
        loss = log[f"{run['variant']}/seed{run['seed']}/loss"]
        assert loss.iloc[0] == run["first_loss"] and loss.iloc[-1] == run["last_loss"]
        assert "curve" not in run  # runs.json keeps the summary; the log has the curve
        for term, value in run["terms"].items():  # the last epoch's mean of each term
            assert log[f"{run['variant']}/seed{run['seed']}/{term}"].iloc[-1] == value
    assert any(runs[i]["terms"] for i in range(len(runs)))
    for variant in cfg.methods:
        for subset in ("dev", "eng_Latn", "deu_Latn", "kor_Hang", "zero_shot", "seen", "unseen"):
            assert 0 <= metrics[f"{variant}/accuracy/{subset}"] <= 100
        # The zero-shot average is over the non-English test subsets only (not the dev split).
        assert metrics[f"{variant}/accuracy/zero_shot"] == pytest.approx(
            (metrics[f"{variant}/accuracy/deu_Latn"] + metrics[f"{variant}/accuracy/kor_Hang"]) / 2,
            abs=1e-3)
    # English is learnable from the genre keyword: every run beats chance (25 %) there.
    out = world / "scores" / "bible_genre" / "tiny-encoder"
    scores = pd.read_parquet(out / "scores.parquet")
    assert scores[scores.subset == "eng_Latn"].value.min() > 25
    for name in ("table.md", "features.png", "metrics.json"):
        assert (out / name).is_file()
    features = pd.read_parquet(runs_dir / "features.parquet")
    assert set(features.subset) == {"eng_Latn", "deu_Latn", "kor_Hang"}
    assert not (world / "work" / "bible_genre" / "tiny-encoder").exists()  # cleaned up


def test_an_interrupted_item_resumes_from_its_finished_runs(world, monkeypatch):
    cfg = tiny_cfg(world, methods=("finetune", "drmim"), output_dir=str(world / "resume"))
    calls = []
    real = downstream_train.train_variant

    def crash_on_drmim(variant, *args, **kwargs):
        calls.append(variant.name)
        if variant.name == "drmim" and calls.count("drmim") == 1:
            raise KeyboardInterrupt
        return real(variant, *args, **kwargs)

    monkeypatch.setattr(downstream_train, "train_variant", crash_on_drmim)
    with pytest.raises(KeyboardInterrupt):
        train_drmim.run(cfg, LANGS, "bible_genre", "tiny-encoder")
    assert (world / "work" / "bible_genre" / "tiny-encoder" / "finetune-seed0.json").is_file()
    trained = train_drmim.run(cfg, LANGS, "bible_genre", "tiny-encoder")
    assert calls == ["finetune", "drmim", "drmim"]  # finetune was not trained again
    assert trained["runs"] == 2
    preds = pd.read_parquet(world / "resume" / "bible_genre" / "tiny-encoder" /
                            "predictions.parquet")
    assert set(preds.variant) == {"finetune", "drmim"}


def test_variants_of_one_seed_train_on_the_same_batches(world, monkeypatch):
    from pipeline.downstream import train as train_mod

    cfg = tiny_cfg(world, methods=("finetune", "drmim", "epar"), seeds=(0,), epochs=2,
                   output_dir=str(world / "paired"))
    orders: list[list[list[int]]] = []
    real = train_mod.length_batches

    def record(*args, **kwargs):
        orders.append(real(*args, **kwargs))
        return orders[-1]

    monkeypatch.setattr(train_mod, "length_batches", record)
    train_drmim.run(cfg, LANGS, "bible_genre", "tiny-encoder")
    assert len(orders) == 6  # 3 variants x 2 epochs
    # DR-MIM draws corpus batches and EPAR perturbs between the epochs: the order is unmoved.
    assert orders[0:2] == orders[2:4] == orders[4:6] and orders[0] != orders[1]


def test_drain_adds_the_step_values_in_order_as_floats():
    from collections import Counter

    from pipeline.downstream.train import _drain

    values = [torch.tensor(v, dtype=torch.float32) for v in (0.1, 1e8, 0.3, -1e8, 0.7)]
    sums: Counter[str] = Counter()
    pending = {"task": list(values[:3]), "loss": []}
    assert _drain(pending, sums) == {"task": pytest.approx(sum(float(v) for v in values[:3]) / 3)}
    pending["task"] += values[3:]
    _drain(pending, sums)
    expected = 0
    for v in values:  # what the loop did before: one float() per step, added in step order
        expected += float(v)
    assert sums["task"] == expected and not pending["task"] and _drain(pending, sums) == {}


def test_training_reads_the_device_only_at_logging_points(world, monkeypatch):
    """The training loop reads no tensor value back per step (on a GPU: a host sync)."""
    import sys

    from pipeline.downstream import train as T

    cfg = tiny_cfg(world, epochs=3)  # 64 examples, batches of 16: 4 steps per epoch
    enc = load_encoder(world / "tiny-encoder")
    task = load_task("bible_genre", cfg)
    train = tokens.encode_split(task.train, task.kind, enc, cfg.max_length, cfg.doc_stride,
                                train=True)
    corpus = tokens.load_corpus(cfg.corpus, LANGS, cfg.max_corpus_rows, cfg.data_seed)
    corpus_seqs = [tokens.encode_texts([(t,) for t in corpus[c]], enc, cfg.max_length)
                   for c in corpus.columns]
    store = FeatureStore(enc, cfg.trainable_layers)
    store.add(train.seqs + [s for col in corpus_seqs for s in col])

    reads: list[str] = []  # the function of pipeline.downstream that read a value

    def counting(real):
        def counted(self, *args, **kwargs):
            caller = sys._getframe(1)
            if caller.f_globals.get("__name__", "").startswith("pipeline.downstream"):
                reads.append(caller.f_code.co_name)
            return real(self, *args, **kwargs)
        return counted

    for name in ("item", "cpu", "__float__", "__int__", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, counting(getattr(torch.Tensor, name)))
    monkeypatch.setattr(T, "LOG_EVERY", 3)
    for variant in ("finetune", "drmim", "epar"):
        reads.clear()
        _, log = T.train_variant(
            parse_variant(variant), enc, store, task, train, 0, corpus_seqs,
            **{f: getattr(cfg, f) for f in ("trainable_layers", "dropout", "drmim", "epar", "lr",
                                            "head_lr", "weight_decay", "batch_size", "epochs",
                                            "warmup_ratio")},
        )
        assert log.steps == 12
        # Per epoch: one read at step 3, one at the end (step 4). The tie's grouping check
        # reads its row indices, which the loop keeps on the host.
        assert [r for r in reads if r != "parallel_tie"] == ["_drain"] * 6, variant


def test_evaluate_needs_train_drmim_first(world):
    with pytest.raises(FileNotFoundError, match="run train_drmim@bible_genre-none first"):
        evaluate_downstream.run(EvaluateDownstreamConfig(runs_dir=str(world / "nowhere")), LANGS,
                     "bible_genre", "none")


@pytest.mark.parametrize("task", ["bible_paraphrase", "pawsx", "xnli", "tydiqa"])
def test_pair_and_qa_tasks_train_and_predict(world, task):
    dataset = str(world / task) if task in ("pawsx", "xnli", "tydiqa") else ""
    cfg = tiny_cfg(world, dataset=dataset, methods=("finetune", "drmim", "epar"),
                   max_length=32, doc_stride=6, epochs=2)
    _, metrics = train_and_score(world, cfg, task, figure="none")
    names = ("f1", "exact_match") if task == "tydiqa" else ("accuracy",)
    for variant in cfg.methods:
        for name in names:
            assert 0 <= metrics[f"{variant}/{name}/zero_shot"] <= 100
