"""Losses against brute-force Python-loop references (value and gradient), duplicate masking,
temperature, the XLCo queue and EMA, GradCache equivalence, the registry and the trainer."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.losses import LOSSES, duplicate_rows, get_loss, text_keys
from pipeline.losses.bilingual_infonce import BilingualInfoNCELoss, CachedBilingualInfoNCELoss
from pipeline.losses.multiway_infonce import (
    CachedMultiwayInfoNCELoss,
    MultiwayInfoNCELoss,
    PivotInfoNCELoss,
)
from pipeline.losses.xlco import XLCoLoss
from tests.fixtures.wordlevel import word_level_tokenizer

DIM = 6


class Stub(nn.Sequential):
    """Maps ``{"emb": (B, dim)}`` to ``{"sentence_embedding": emb @ W.T}`` (W starts near I).

    A Sequential, like a SentenceTransformer, whose first module is not a StaticEmbedding.
    """

    def __init__(self, dim: int = DIM) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim, bias=False)
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(dim) + 0.1 * torch.randn(dim, dim))
        self.dim = dim

    def forward(self, features: dict) -> dict:
        return {"sentence_embedding": self.linear(features["emb"])}

    def get_embedding_dimension(self) -> int:
        return self.dim


def columns(n_langs: int, batch: int, seed: int = 0, dtype=torch.float64) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(batch, DIM, generator=g, dtype=dtype).requires_grad_() for _ in range(n_langs)
    ]


def features_of(embs, texts=None):
    """Feature dicts for the stub; ``texts[l][r]`` (token id lists) become padded input_ids."""
    feats = []
    for lang, emb in enumerate(embs):
        f = {"emb": emb}
        if texts is not None:
            rows = texts[lang]
            width = max(len(t) for t in rows)
            f["input_ids"] = torch.tensor([t + [0] * (width - len(t)) for t in rows])
            f["attention_mask"] = (f["input_ids"] != 0).long()
        feats.append(f)
    return feats


def stub_model(dtype=torch.float64) -> Stub:
    torch.manual_seed(1)
    return Stub().to(dtype)


def grads(loss: torch.Tensor, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, tensors))


# ----------------------------------------------------------------------------------------
# Brute-force references (plain loops over rows, languages and candidates)
# ----------------------------------------------------------------------------------------


def sim(a, b, similarity):
    if similarity == "cosine":
        return (a @ b) / (a.norm() * b.norm())
    return a @ b


def shares_text(texts, r1, r2):
    return texts is not None and any(column[r1] == column[r2] for column in texts)


def ref_multiway(z, tau, similarity="cosine", texts=None, pivot=False):
    """Mean over (anchor, positive) of -log(e^{s_ap} / (e^{s_ap} + sum_neg e^{s_an})) and
    the per-anchor-language parts of that mean; ``pivot``: only pairs holding column 0."""
    n_langs, batch = len(z), z[0].shape[0]
    per_lang = [0.0] * n_langs
    count = 0
    for r in range(batch):
        for lang in range(n_langs):
            a = z[lang][r]
            negs = [
                z[m][r2]
                for r2 in range(batch)
                for m in range(n_langs)
                if r2 != r and not shares_text(texts, r, r2)
            ]
            for p in range(n_langs):
                if p == lang or (pivot and 0 not in (p, lang)):
                    continue
                s_p = sim(a, z[p][r], similarity) / tau
                denom = torch.exp(s_p) + sum(torch.exp(sim(a, n, similarity) / tau) for n in negs)
                per_lang[lang] = per_lang[lang] - (s_p - torch.log(denom))
                count += 1
    per_lang = [t / count for t in per_lang]
    return sum(per_lang), per_lang


def ref_bilingual(x, y, tau, similarity="cosine", texts=None):
    batch = x.shape[0]
    directions = []
    for q, c in ((x, y), (y, x)):
        total = 0.0
        for i in range(batch):
            cands = [j for j in range(batch) if j == i or not shares_text(texts, i, j)]
            logits = torch.stack([sim(q[i], c[j], similarity) / tau for j in cands])
            total = total - (logits[cands.index(i)] - torch.logsumexp(logits, 0))
        directions.append(total / batch / 2)
    return directions


def ref_xlco(q, k, queue, tau):
    total = 0.0
    for i in range(q.shape[0]):
        qi = F.normalize(q[i], dim=0)
        ki = F.normalize(k[i], dim=0)
        logits = [qi @ ki / tau] + [qi @ u / tau for u in queue]
        logits = torch.stack(logits)
        total = total - (logits[0] - torch.logsumexp(logits, 0))
    return total / q.shape[0]


# ----------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------


def test_registry_unknown_name_lists_registered():
    with pytest.raises(ValueError, match=r"unknown loss 'multiway'; did you mean 'multiway_infonce'"
                       r".*registered: bilingual_infonce, cached_bilingual_infonce, "
                       r"cached_multiway_infonce, "
                       r"multiway_infonce, pivot_infonce, xlco\)"):
        get_loss("multiway", Stub())


def test_registry_unknown_hparam_names_accepted_ones():
    with pytest.raises(ValueError, match=r"loss 'xlco' has no hyperparameter 'temprature'; "
                       r"did you mean 'temperature'.*accepted: temperature, momentum, queue_size"):
        get_loss("xlco", Stub(), temprature=0.1)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_registry_builds_every_loss_with_its_hparams(name):
    loss = get_loss(name, Stub(), temperature=0.2)
    assert type(loss).__name__ == LOSSES[name].split(":")[1]
    assert loss.get_config_dict()["temperature"] == 0.2
    assert loss.model is not None and "title=" in loss.citation


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": 0.0}, r"temperature must be > 0, got 0.0"),
        ({"similarity": "l2"}, r"similarity must be 'cosine' or 'dot', got 'l2'"),
    ],
)
def test_bad_hparams_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MultiwayInfoNCELoss(Stub(), **kwargs)


# ----------------------------------------------------------------------------------------
# multiway_infonce
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_langs", "similarity", "tau"), [(2, "cosine", 0.1), (3, "cosine", 0.05), (4, "dot", 0.7)]
)
def test_multiway_matches_reference_value_and_gradient(n_langs, similarity, tau):
    model = stub_model()
    embs = columns(n_langs, batch=5)
    loss = MultiwayInfoNCELoss(model, temperature=tau, similarity=similarity, mask_duplicates=False)
    assert_matches_ref_multiway(loss, embs, None, tau, similarity)


def assert_matches_ref_multiway(loss, embs, texts, tau, similarity, pivot=False) -> torch.Tensor:
    """The loss's terms, total and gradients equal :func:`ref_multiway`'s; returns the total."""
    terms = loss(features_of(embs, texts), None)
    total = torch.stack(list(terms.values())).sum()
    z = [loss.model({"emb": e})["sentence_embedding"] for e in embs]
    ref_total, ref_terms = ref_multiway(z, tau, similarity, texts=texts, pivot=pivot)
    torch.testing.assert_close(total, ref_total)
    for got, want in zip(terms.values(), ref_terms, strict=True):
        torch.testing.assert_close(got, want)
    params = [*embs, loss.model.linear.weight]
    for got, want in zip(grads(total, params), grads(ref_total, params), strict=True):
        torch.testing.assert_close(got, want)
    return total


@pytest.mark.parametrize(("n_langs", "similarity"), [(3, "cosine"), (4, "dot")])
def test_pivot_keeps_only_the_source_pairs(n_langs, similarity):
    model = stub_model()
    embs = columns(n_langs, batch=5)
    texts = [[[c + 1, r % 4 + 1] for r in range(5)] for c in range(n_langs)]  # rows 0, 4 repeat
    loss = PivotInfoNCELoss(model, temperature=0.3, similarity=similarity)
    total = assert_matches_ref_multiway(loss, embs, texts, 0.3, similarity, pivot=True)
    # It differs from the multi-way loss on the same batch (the X-Y pairs are gone) ...
    full = MultiwayInfoNCELoss(model, temperature=0.3, similarity=similarity)
    assert not torch.isclose(torch.stack(list(full(features_of(embs, texts), None).values())).sum(),
                             total)
    # ... and equals it with two columns, where every pair holds the source.
    two = features_of(embs[:2], texts[:2])
    torch.testing.assert_close(torch.stack(list(loss(two, None).values())).sum(),
                               torch.stack(list(full(two, None).values())).sum())


def test_multiway_terms_are_named_by_language_and_checked():
    embs = columns(3, batch=4)
    loss = MultiwayInfoNCELoss(stub_model(), mask_duplicates=False,
                               languages=["eng_Latn", "deu_Latn", "rus_Cyrl"])
    names = list(loss(features_of(embs)))
    assert names == ["anchor_eng_Latn", "anchor_deu_Latn", "anchor_rus_Cyrl"]
    with pytest.raises(ValueError, match=r"the batch has 2 columns but languages=.* names 3"):
        loss(features_of(embs[:2]))
    with pytest.raises(ValueError, match=r"at least 2 language columns, got 1"):
        MultiwayInfoNCELoss(stub_model(), mask_duplicates=False)(features_of(embs[:1]))


# Rows 0 and 3 repeat one English text; rows 1 and 4 repeat the same text in every language.
TEXTS = [
    [[5, 6], [7], [8, 9, 10], [5, 6], [7], [11]],
    [[20, 21], [22, 23], [24], [25], [22, 23], [26, 27, 28]],
    [[30], [31, 32], [33], [34], [31, 32], [35, 36]],
]


def test_multiway_duplicates_are_not_negatives():
    model = stub_model()
    embs = columns(3, batch=6, seed=3)
    with torch.no_grad():  # an exact duplicate row also has identical embeddings
        for e in embs:
            e[4] = e[1]
    feats = features_of(embs, TEXTS)
    masked = MultiwayInfoNCELoss(model, temperature=0.1)(feats)
    unmasked = MultiwayInfoNCELoss(model, temperature=0.1, mask_duplicates=False)(feats)
    masked_total = torch.stack(list(masked.values())).sum()
    unmasked_total = torch.stack(list(unmasked.values())).sum()

    z = [model({"emb": e})["sentence_embedding"] for e in embs]
    ref_masked, _ = ref_multiway(z, 0.1, texts=TEXTS)
    ref_unmasked, _ = ref_multiway(z, 0.1)
    torch.testing.assert_close(masked_total, ref_masked)
    torch.testing.assert_close(unmasked_total, ref_unmasked)
    # The duplicate row is a negative at similarity 1 when not masked: a much larger loss.
    assert unmasked_total > masked_total + 0.5
    for got, want in zip(grads(masked_total, embs), grads(ref_masked, embs), strict=True):
        torch.testing.assert_close(got, want)


def test_cached_multiway_matches_reference_exactly():
    """GradCache on the float64 stub: chunks of 4 anchors, mini-batches of 2 rows."""
    model = stub_model()
    embs = columns(3, batch=6, seed=4)
    feats = features_of(embs, TEXTS)
    loss = CachedMultiwayInfoNCELoss(model, temperature=0.2, mini_batch_size=2)
    terms = loss(feats)
    total = torch.stack(list(terms.values())).sum()
    z = [model({"emb": e})["sentence_embedding"] for e in embs]
    ref_total, ref_terms = ref_multiway(z, 0.2, texts=TEXTS)
    for got, want in zip(terms.values(), ref_terms, strict=True):
        torch.testing.assert_close(got, want)
    params = [*embs, model.linear.weight]
    want_grads = backward_grads(ref_total, params)
    for got, want in zip(backward_grads(total, params), want_grads, strict=True):
        torch.testing.assert_close(got, want)
    with torch.no_grad():  # evaluation: no cache, no hook, same values
        evaluated = loss(feats)
    for got, want in zip(evaluated.values(), ref_terms, strict=True):
        torch.testing.assert_close(got, want.detach())


def test_mask_duplicates_needs_input_ids():
    with pytest.raises(ValueError, match=r"compares 'input_ids'.*pass mask_duplicates=False"):
        MultiwayInfoNCELoss(stub_model())(features_of(columns(2, batch=3)))


def test_text_keys_ignore_padding_side_and_width():
    right = {"input_ids": torch.tensor([[5, 6, 0, 0], [5, 6, 7, 0], [5, 0, 0, 0]]),
             "attention_mask": torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]])}
    left = {"input_ids": torch.tensor([[0, 5, 6], [5, 6, 7], [0, 0, 5]]),
            "attention_mask": torch.tensor([[0, 1, 1], [1, 1, 1], [0, 0, 1]])}
    keys = torch.stack([text_keys(right), text_keys(left)])
    assert keys[0].tolist() == keys[1].tolist()
    assert len(set(keys[0].tolist())) == 3
    # Rows 0 and 2 repeat a text in column 0, rows 1 and 3 one in column 1.
    dup = torch.tensor([[0, 1, 0, 2], [2, 3, 4, 3]])
    assert duplicate_rows(dup).tolist() == [
        [True, False, True, False],
        [False, True, False, True],
        [True, False, True, False],
        [False, True, False, True],
    ]


def test_temperature_scales_dot_logits_and_sharpens_aligned_batches():
    model = stub_model()
    embs = columns(3, batch=4, seed=5)

    def total(es, tau, similarity):
        loss = MultiwayInfoNCELoss(model, temperature=tau, similarity=similarity,
                                   mask_duplicates=False)
        return torch.stack(list(loss(features_of(es)).values())).sum()

    # With dot products, s/τ = (x/√τ)·(y/√τ): the temperature acts as a scale on the inputs
    # (the stub is linear, so scaling its inputs scales its outputs).
    scaled = [e / math.sqrt(0.3) for e in embs]
    torch.testing.assert_close(total(embs, 0.3, "dot"), total(scaled, 1.0, "dot"))
    # Translations that coincide: lowering τ drives the loss to 0, raising it loses contrast.
    same = [embs[0]] * 3
    values = [total(same, tau, "cosine").item() for tau in (1.0, 0.1, 0.01, 0.001)]
    assert values == sorted(values, reverse=True) and len(set(values)) == 4
    assert values[0] > 1.0 and values[-1] < 1e-6


def test_single_row_batch_has_zero_loss_and_finite_gradient():
    embs = columns(3, batch=1)
    terms = MultiwayInfoNCELoss(stub_model(), mask_duplicates=False)(features_of(embs))
    total = torch.stack(list(terms.values())).sum()
    assert total.item() == 0.0
    assert all(torch.isfinite(g).all() for g in grads(total, embs))


# ----------------------------------------------------------------------------------------
# bilingual_infonce
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("similarity", "tau"), [("cosine", 0.05), ("dot", 0.5)])
def test_bilingual_matches_reference_and_sentence_transformers(similarity, tau):
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.util import cos_sim, dot_score

    model = stub_model()
    x, y = columns(2, batch=6, seed=7)
    terms = BilingualInfoNCELoss(model, temperature=tau, similarity=similarity,
                                 mask_duplicates=False)(features_of([x, y]))
    assert list(terms) == ["src_to_tgt", "tgt_to_src"]
    total = terms["src_to_tgt"] + terms["tgt_to_src"]

    zx, zy = (model({"emb": e})["sentence_embedding"] for e in (x, y))
    ref = ref_bilingual(zx, zy, tau, similarity)
    torch.testing.assert_close(terms["src_to_tgt"], ref[0])
    torch.testing.assert_close(terms["tgt_to_src"], ref[1])
    st = MultipleNegativesRankingLoss(
        model, scale=1 / tau, similarity_fct=cos_sim if similarity == "cosine" else dot_score,
        directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction",
    )(features_of([x, y]), None)
    torch.testing.assert_close(total, st)
    params = [x, y, model.linear.weight]
    for got, want in zip(grads(total, params), grads(st, params), strict=True):
        torch.testing.assert_close(got, want)


def test_bilingual_duplicates_are_not_candidates():
    model = stub_model()
    x, y = columns(2, batch=6, seed=9)
    texts = TEXTS[:2]
    terms = BilingualInfoNCELoss(model, temperature=0.1)(features_of([x, y], texts))
    total = terms["src_to_tgt"] + terms["tgt_to_src"]
    zx, zy = (model({"emb": e})["sentence_embedding"] for e in (x, y))
    ref = sum(ref_bilingual(zx, zy, 0.1, texts=texts))
    torch.testing.assert_close(total, ref)
    unmasked = BilingualInfoNCELoss(model, temperature=0.1, mask_duplicates=False)(
        features_of([x, y], texts))
    assert not torch.allclose(total, sum(unmasked.values()))
    for got, want in zip(grads(total, [x, y]), grads(ref, [x, y]), strict=True):
        torch.testing.assert_close(got, want)


def test_bilingual_needs_two_columns():
    with pytest.raises(ValueError, match=r"exactly 2 columns .* got 3; use multiway_infonce"):
        BilingualInfoNCELoss(stub_model(), mask_duplicates=False)(features_of(columns(3, 2)))


# ----------------------------------------------------------------------------------------
# xlco
# ----------------------------------------------------------------------------------------


def xlco_loss(**kwargs) -> XLCoLoss:
    kwargs = {"temperature": 0.25, "momentum": 0.9, "queue_size": 8, "projection": False} | kwargs
    return XLCoLoss(stub_model(), **kwargs)


def test_xlco_matches_reference_with_filled_queue():
    loss = xlco_loss(projection=True)
    queue = F.normalize(torch.randn(5, DIM, dtype=torch.float64), dim=1)
    loss.enqueue(queue)
    x, y = columns(2, batch=4, seed=11)
    with torch.no_grad():  # move the query encoder away from its key copy
        loss.model.linear.weight.add_(0.05)
    out = loss(features_of([x, y]))
    assert list(out) == ["xlco"]

    # The forward applied the EMA first; the reference uses the updated key encoder.
    q = loss.head(loss.model({"emb": x})["sentence_embedding"])
    with torch.no_grad():
        k = loss.key_head(loss.key_model({"emb": y})["sentence_embedding"])
    ref = ref_xlco(q, k, queue, 0.25)
    torch.testing.assert_close(out["xlco"], ref)
    params = [x, loss.model.linear.weight, loss.head.weight]
    for got, want in zip(grads(out["xlco"], params), grads(ref, params), strict=True):
        torch.testing.assert_close(got, want)
    # Keys get no gradient: the translation and the key encoder are outside the graph.
    assert out["xlco"].grad_fn is not None and y.grad is None
    assert all(not p.requires_grad for p in loss.key_model.parameters())
    assert not loss.key_head.weight.requires_grad


def test_xlco_queue_is_a_ring_buffer_of_keys():
    loss = xlco_loss(queue_size=5)
    assert dict(loss.named_buffers()).keys() == {"queue", "queue_ptr", "queue_filled"}
    x, y = columns(2, batch=3, seed=12)
    first = loss(features_of([x, y]))
    assert first["xlco"].item() == pytest.approx(0.0)  # empty queue: no negatives yet
    with torch.no_grad():
        k1 = F.normalize(loss.key_model({"emb": y})["sentence_embedding"], dim=1)
    torch.testing.assert_close(loss.queue[:3], k1)
    assert (int(loss.queue_ptr), int(loss.queue_filled)) == (3, 3)

    x2, y2 = columns(2, batch=3, seed=13)
    loss(features_of([x2, y2]))
    with torch.no_grad():
        k2 = F.normalize(loss.key_model({"emb": y2})["sentence_embedding"], dim=1)
    # 3 + 3 keys in 5 slots: the last key wraps around onto the oldest slot.
    torch.testing.assert_close(loss.queue[3:5], k2[:2])
    torch.testing.assert_close(loss.queue[0], k2[2])
    torch.testing.assert_close(loss.queue[1:3], k1[1:3])
    assert (int(loss.queue_ptr), int(loss.queue_filled)) == (1, 5)


def test_xlco_momentum_update_and_eval_mode():
    loss = xlco_loss(momentum=0.9, projection=True)
    x, y = columns(2, batch=3, seed=14)
    key_before = loss.key_model.linear.weight.detach().clone()
    head_before = loss.key_head.weight.detach().clone()
    with torch.no_grad():  # stands in for an optimiser step on the query side
        loss.model.linear.weight.mul_(1.5)
        loss.head.weight.add_(0.3)
    loss(features_of([x, y]))
    torch.testing.assert_close(loss.key_model.linear.weight,
                               0.9 * key_before + 0.1 * loss.model.linear.weight)
    torch.testing.assert_close(loss.key_head.weight, 0.9 * head_before + 0.1 * loss.head.weight)

    # Evaluation (model.eval() or no_grad) neither moves the key encoder nor enqueues.
    loss.model.eval()
    state = {k: v.clone() for k, v in loss.state_dict().items()}
    loss(features_of([x, y]))
    loss.model.train()
    with torch.no_grad():
        loss(features_of([x, y]))
    assert all(torch.equal(state[k], v) for k, v in loss.state_dict().items())
    # The key encoder stays in eval mode whatever the loss is switched to.
    loss.train()
    assert not loss.key_model.training


def test_xlco_symmetric_terms():
    loss = xlco_loss(symmetric=True, momentum=0.0, queue_size=16)
    loss.enqueue(F.normalize(torch.randn(4, DIM, dtype=torch.float64), dim=1))
    queue = loss.queue[:4].clone()
    x, y = columns(2, batch=3, seed=15)
    out = loss(features_of([x, y]))
    zx, zy = (loss.model({"emb": e})["sentence_embedding"] for e in (x, y))
    torch.testing.assert_close(out["xlco_src_to_tgt"], ref_xlco(zx, zy.detach(), queue, 0.25) / 2)
    torch.testing.assert_close(out["xlco_tgt_to_src"], ref_xlco(zy, zx.detach(), queue, 0.25) / 2)
    assert int(loss.queue_filled) == 4 + 6  # both directions' keys were enqueued


def test_xlco_rejects_bad_settings():
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\), got 1.0"):
        xlco_loss(momentum=1.0)
    with pytest.raises(ValueError, match=r"at least 2 columns \(source, translation\), got 1"):
        xlco_loss()(features_of(columns(1, 2)))
    with pytest.raises(ValueError, match=r"3 columns but languages=\['a', 'b'\] names 2"):
        xlco_loss(languages=["a", "b"])(features_of(columns(3, 2)))


@pytest.mark.parametrize("symmetric", [False, True])
def test_xlco_on_multiway_rows_contrasts_every_pair(symmetric):
    loss = xlco_loss(symmetric=symmetric, momentum=0.0, queue_size=64, languages=["en", "de", "fr"])
    loss.enqueue(F.normalize(torch.randn(4, DIM, dtype=torch.float64), dim=1))
    queue = loss.queue[:4].clone()
    embs = columns(3, batch=3, seed=16)
    out = loss(features_of(embs))
    z = [loss.model({"emb": e})["sentence_embedding"] for e in embs]
    pairs = [(q, k) for q in range(3) for k in range(3) if q != k and (symmetric or q == 0)]
    want = {lang: 0.0 for q, lang in enumerate(["en", "de", "fr"]) if symmetric or q == 0}
    for q, k in pairs:
        want[["en", "de", "fr"][q]] += ref_xlco(z[q], z[k].detach(), queue, 0.25) / len(pairs)
    assert list(out) == [f"xlco_{lang}" for lang in want]
    for got, ref in zip(out.values(), want.values(), strict=True):
        torch.testing.assert_close(got, ref)
    # The keys of every key column were enqueued: the translations', and the source's too
    # when every language is a query.
    assert int(loss.queue_filled) == 4 + 3 * (3 if symmetric else 2)


# ----------------------------------------------------------------------------------------
# A tiny real SentenceTransformer: GradCache equivalence and the trainer's term logging
# ----------------------------------------------------------------------------------------

WORDS = ("the cat dog sat on a mat red big small der die das katze hund rot gross klein "
         "le la chat chien rouge grand petit").split()
SENTENCES = {
    "eng_Latn": ["the cat sat", "the dog sat on a mat", "a red cat", "the big dog",
                 "the cat sat", "a small mat", "the red dog sat", "a big cat on a mat"],
    "deu_Latn": ["die katze sat", "der hund sat on das mat", "die rot katze", "der gross hund",
                 "die katze sat", "das klein mat", "der rot hund sat", "die gross katze on mat"],
    "fra_Latn": ["le chat sat", "le chien sat on la mat", "le chat rouge", "le grand chien",
                 "le chat sat", "la petit mat", "le chien rouge sat", "le grand chat on la mat"],
}


@pytest.fixture(scope="module")
def tiny_st_dir(tmp_path_factory):
    from transformers import BertConfig, BertModel

    fast, vocab = word_level_tokenizer(WORDS)
    path = tmp_path_factory.mktemp("tiny_st")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=32,
                        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    BertModel(config).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def tiny_st(path, dropout: bool):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    kwargs = {} if dropout else {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    transformer = Transformer(str(path), max_seq_length=16, config_kwargs=kwargs)
    model = SentenceTransformer(
        modules=[transformer, Pooling(transformer.get_embedding_dimension(), "mean")],
        device="cpu",
    )
    model.train()
    return model


def st_features(model):
    return [model.preprocess(texts) for texts in SENTENCES.values()]


def param_grads(model, total):
    model.zero_grad()
    total.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_cached_equals_uncached(model, cached, uncached, n_cols: int, names: list[str]):
    """``cached`` on the first ``n_cols`` columns returns the terms ``names`` of ``uncached``
    (same values) and, summed, the same parameter gradients."""
    ref_terms = uncached(st_features(model)[:n_cols])
    ref_grads = param_grads(model, torch.stack(list(ref_terms.values())).sum())
    terms = cached(st_features(model)[:n_cols])
    got_grads = param_grads(model, torch.stack(list(terms.values())).sum())

    assert list(terms) == names
    for name in terms:
        torch.testing.assert_close(terms[name], ref_terms[name].detach(), atol=1e-5, rtol=1e-5)
    assert got_grads.keys() == ref_grads.keys() and len(ref_grads) > 10
    for name, grad in ref_grads.items():
        torch.testing.assert_close(got_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)
    assert cached.get_config_dict()["mini_batch_size"] == 3


def test_cached_multiway_gradients_equal_uncached(tiny_st_dir):
    model = tiny_st(tiny_st_dir, dropout=False)
    langs = list(SENTENCES)
    uncached = MultiwayInfoNCELoss(model, temperature=0.1, languages=langs)
    cached = CachedMultiwayInfoNCELoss(model, temperature=0.1, languages=langs, mini_batch_size=3)
    assert_cached_equals_uncached(model, cached, uncached, len(langs),
                                  [f"anchor_{lang}" for lang in langs])


def test_cached_bilingual_equals_uncached(tiny_st_dir):
    """En-X on the cached loss: same terms and parameter gradients as the plain bilingual loss,
    with mini-batches smaller than the batch (so the GradCache passes really split it)."""
    model = tiny_st(tiny_st_dir, dropout=False)
    uncached = BilingualInfoNCELoss(model, temperature=0.1)
    cached = CachedBilingualInfoNCELoss(model, temperature=0.1, mini_batch_size=3)
    assert_cached_equals_uncached(model, cached, uncached, 2, ["src_to_tgt", "tgt_to_src"])
    with pytest.raises(ValueError, match="needs exactly 2 columns"):
        cached(st_features(model))


def test_cached_multiway_replays_dropout(tiny_st_dir):
    """With dropout on, the cached loss replays each mini-batch's RNG state: one mini-batch
    per column consumes the RNG like column-by-column uncached embedding from the same seed."""
    from sentence_transformers.base.losses.merged_forward import column_merging_disabled

    model = tiny_st(tiny_st_dir, dropout=True)
    uncached = MultiwayInfoNCELoss(model, temperature=0.1)
    cached = CachedMultiwayInfoNCELoss(model, temperature=0.1, mini_batch_size=8)
    torch.manual_seed(123)
    with column_merging_disabled():
        ref = torch.stack(list(uncached(st_features(model)).values())).sum()
    ref_grads = param_grads(model, ref)
    torch.manual_seed(123)
    total = torch.stack(list(cached(st_features(model)).values())).sum()
    torch.testing.assert_close(total.detach(), ref.detach(), atol=1e-5, rtol=1e-5)
    got_grads = param_grads(model, total)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(got_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def backward_grads(total, tensors):
    """Gradients via .backward() (GradCache back-propagates inside a hook, which
    torch.autograd.grad would not see)."""
    for t in tensors:
        t.grad = None
    total.backward()
    return [t.grad.clone() for t in tensors]


@pytest.mark.parametrize(
    ("cls", "n_cols", "kwargs"),
    [
        (MultiwayInfoNCELoss, 3, {}),
        (CachedMultiwayInfoNCELoss, 3, {"mini_batch_size": 4}),
        (BilingualInfoNCELoss, 2, {}),
        (CachedBilingualInfoNCELoss, 2, {"mini_batch_size": 4}),
    ],
)
def test_gather_across_devices_in_a_world_of_one(tmp_path, cls, n_cols, kwargs):
    """A single-process gloo group: gathering runs and changes nothing at world size 1."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        embs = columns(n_cols, batch=6, seed=21)
        feats = features_of(embs, TEXTS[:n_cols])
        results = []
        for gather in (False, True):
            total = sum(cls(stub_model(), gather_across_devices=gather, **kwargs)(feats).values())
            results.append((total.detach(), backward_grads(total, embs)))
        (plain, plain_grads), (gathered, gathered_grads) = results
        torch.testing.assert_close(gathered, plain)
        for got, want in zip(gathered_grads, plain_grads, strict=True):
            torch.testing.assert_close(got, want)
        if cls is MultiwayInfoNCELoss:
            xlco = xlco_loss(gather_across_devices=True)
            xlco(features_of(embs[:2]))
            assert int(xlco.queue_filled) == 6
    finally:
        dist.destroy_process_group()


def test_trainer_logs_named_terms(tiny_st_dir, tmp_path):
    """sentence-transformers' trainer sums the returned terms and logs each one."""
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )

    model = tiny_st(tiny_st_dir, dropout=True)
    langs = list(SENTENCES)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=2, logging_steps=1,
        learning_rate=1e-3, save_strategy="no", report_to=[], use_cpu=True,
        dataloader_num_workers=0, disable_tqdm=True, seed=0,
    )
    loss = get_loss("cached_multiway_infonce", model, languages=langs, mini_batch_size=3)
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=Dataset.from_dict(SENTENCES), loss=loss
    )
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2
    for entry in logs:
        parts = [entry[f"anchor_{lang}"] for lang in langs]
        assert entry["loss"] == pytest.approx(sum(parts), abs=2e-3)
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())
