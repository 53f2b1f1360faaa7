"""faiss ratio-margin mining: equal to a dense brute force, recovers planted pairs, CLI entry."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.evaluation.mining import mine, mine_pairs, normalize, read_sentences


def dense_reference(x: np.ndarray, y: np.ndarray, k: int) -> dict[str, set]:
    """Margin mining from the full similarity matrix, written out the slow obvious way."""
    s = normalize(x).astype(np.float64) @ normalize(y).astype(np.float64).T  # (n, m)
    mean_x = np.sort(s, axis=1)[:, ::-1][:, :k].mean(axis=1)
    mean_y = np.sort(s, axis=0)[::-1, :][:k, :].mean(axis=0)
    margin = s / ((mean_x[:, None] + mean_y[None, :]) / 2)
    fwd, bwd = {}, {}
    for i in range(len(x)):
        candidates = np.argsort(-s[i])[:k]
        j = candidates[np.argmax(margin[i, candidates])]
        fwd[(i, int(j))] = margin[i, j]
    for j in range(len(y)):
        candidates = np.argsort(-s[:, j])[:k]
        i = candidates[np.argmax(margin[candidates, j])]
        bwd[(int(i), j)] = margin[i, j]
    inter = {p: v for p, v in fwd.items() if p in bwd}
    return {"forward": fwd, "backward": bwd, "intersection": inter}


@pytest.mark.parametrize("mode", ["forward", "backward", "intersection"])
def test_margin_mining_equals_dense_brute_force(mode):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 16)), rng.normal(size=(75, 16))
    y[:30] = x[:30] + 0.5 * rng.normal(size=(30, 16))  # some related pairs, most not
    expected = dense_reference(x, y, k=4)[mode]
    got = mine_pairs(x, y, k=4, mode=mode, block_size=7)  # several faiss blocks
    assert {(s, t) for s, t in zip(got.src, got.tgt)} == set(expected)
    for s, t, score in zip(got.src, got.tgt, got.score):
        assert score == pytest.approx(expected[(s, t)], rel=1e-5)
    assert list(got.score) == sorted(got.score, reverse=True)


def test_margin_mining_recovers_planted_pairs_among_distractors():
    rng = np.random.default_rng(1)
    d, n_planted = 64, 200
    y = normalize(rng.normal(size=(2000, d)))
    targets = rng.choice(len(y), size=n_planted, replace=False)
    # Noisy copies (cosine ~0.8 to their target) plus 800 sources with no translation.
    planted = y[targets] + rng.normal(scale=0.75 / np.sqrt(d), size=(n_planted, d))
    x = np.concatenate([planted, rng.normal(size=(800, d))])
    order = rng.permutation(len(x))
    x = x[order]
    truth = {(int(np.flatnonzero(order == i)[0]), int(t)) for i, t in enumerate(targets)}

    # Planted pairs score ~1.66 ± 0.06, the best distractors at most ~1.32.
    mined = mine_pairs(x, y, k=4, mode="intersection", threshold=1.45)
    assert {(s, t) for s, t in zip(mined.src, mined.tgt)} == truth
    # Without a threshold, forward mode gives every source a (mostly wrong) partner, and the
    # planted pairs are exactly the best-scored ones.
    fwd = mine_pairs(x, y, k=4, mode="forward")
    assert len(fwd) == len(x)
    top = fwd.head(n_planted)
    assert {(s, t) for s, t in zip(top.src, top.tgt)} == truth


def test_mining_rejects_bad_arguments(tmp_path):
    x = np.ones((3, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="mode must be one of forward, backward, intersection, "
                                         "got 'union'"):
        mine_pairs(x, x, mode="union")
    with pytest.raises(ValueError, match="k must be at least 1, got 0"):
        mine_pairs(x, x, k=0)
    with pytest.raises(ValueError, match="embedding sizes differ: source 4, target 5"):
        mine_pairs(x, np.ones((3, 5)))
    with pytest.raises(FileNotFoundError, match="sentence file not found: .*missing.txt"):
        read_sentences(tmp_path / "missing.txt")


@pytest.fixture(scope="module")
def tiny_encoder_dir(tmp_path_factory):
    from tests.test_evaluation import all_fixture_texts, build_tiny_encoder

    return build_tiny_encoder(tmp_path_factory.mktemp("mine_encoder"), all_fixture_texts())


def test_mine_from_text_files_equals_mining_the_raw_embeddings(tmp_path, tiny_encoder_dir):
    from sentence_transformers import SentenceTransformer

    from tests.test_evaluation import verse_text

    src_lines = [verse_text("eng_Latn", 0, 1, i) for i in range(30)]
    tgt_lines = [verse_text("deu_Latn", 0, 1, i) for i in range(10, 50)]
    (tmp_path / "src.txt").write_text("\n".join(src_lines[:5] + ["", "  "] + src_lines
                                                + [src_lines[3]]) + "\n", encoding="utf-8")
    (tmp_path / "tgt.txt").write_text("\n".join(tgt_lines) + "\n", encoding="utf-8")
    assert read_sentences(tmp_path / "src.txt") == src_lines  # blanks and repeats dropped

    stats = mine(tmp_path / "src.txt", tmp_path / "tgt.txt", str(tiny_encoder_dir),
                 tmp_path / "mined.parquet", k=3, threshold=None, mode="intersection",
                 batch_size=8, device="cpu")
    got = pd.read_parquet(tmp_path / "mined.parquet")

    encoder = SentenceTransformer(str(tiny_encoder_dir), device="cpu", local_files_only=True)
    x, y = encoder.encode(src_lines, batch_size=8), encoder.encode(tgt_lines, batch_size=8)
    ref = mine_pairs(x, y, k=3, mode="intersection")
    assert list(got.src_index) == list(ref.src) and list(got.tgt_index) == list(ref.tgt)
    np.testing.assert_allclose(got.score, ref.score, rtol=1e-5)
    assert list(got.src) == [src_lines[i] for i in ref.src]
    assert list(got.tgt) == [tgt_lines[j] for j in ref.tgt]
    assert stats["pairs"] == len(ref) > 0
    assert (stats["src_sentences"], stats["tgt_sentences"]) == (30, 40)
