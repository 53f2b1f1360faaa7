"""faiss ratio-margin mining: equal to a dense brute force, recovers planted pairs, CLI entry;
approximate indexes against exact search; fp16 shards; streamed text files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.evaluation.mining.faiss_index import IndexParams, index_factory_string, knn_recall
from pipeline.evaluation.mining.margin import margin_candidates, mine_pairs, select_pairs
from pipeline.evaluation.mining.mine import mine
from pipeline.evaluation.mining.sentences import read_sentences
from pipeline.evaluation.mining.shards import EmbeddingShards, ShardWriter, normalize

ROOT = Path(__file__).resolve().parents[1]


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

    # float32 shards hold the encoder's values as they are: the in-memory result.
    stats = mine(tmp_path / "src.txt", tmp_path / "tgt.txt", str(tiny_encoder_dir),
                 tmp_path / "mined.parquet", k=3, threshold=None, mode="intersection",
                 batch_size=8, device="cpu", dtype="float32")
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

    # The same through float16 shards written in chunks of 7 sentences and kept in work_dir:
    # equal to mining the encoder's embeddings rounded to float16.
    stats16 = mine(tmp_path / "src.txt", tmp_path / "tgt.txt", str(tiny_encoder_dir),
                   tmp_path / "mined16.parquet", k=3, threshold=None, mode="intersection",
                   batch_size=8, device="cpu", shard_size=7, dtype="float16",
                   work_dir=tmp_path / "work")
    got16 = pd.read_parquet(tmp_path / "mined16.parquet")
    assert len(EmbeddingShards(tmp_path / "work/source_embeddings").files) == 5  # 30 / 7
    ref16 = mine_pairs(normalize(x).astype(np.float16), normalize(y).astype(np.float16), k=3)
    assert set(zip(got16.src_index, got16.tgt_index)) == set(zip(ref16.src, ref16.tgt))
    np.testing.assert_allclose(np.sort(got16.score), np.sort(ref16.score), rtol=1e-3)
    assert stats16["pairs"] == len(ref16)


def planted_data(n_src: int, n_tgt: int, n_planted: int, d: int, seed: int):
    """Random unit targets; the first ``n_planted`` sources are noisy copies (cosine ~0.8)."""
    rng = np.random.default_rng(seed)
    y = normalize(rng.normal(size=(n_tgt, d)))
    targets = rng.choice(n_tgt, size=n_planted, replace=False)
    x = rng.normal(size=(n_src, d)).astype(np.float32)
    x[:n_planted] = y[targets] + 0.75 / np.sqrt(d) * x[:n_planted]
    return normalize(x), y, set(zip(range(n_planted), targets.tolist()))


def test_flat_over_shards_equals_in_memory_mining_bit_for_bit(tmp_path):
    x, y, _ = planted_data(300, 250, 50, 16, seed=2)
    writer = ShardWriter(tmp_path / "x", "float32")
    for start in range(0, len(x), 64):  # shards of 64 rows, read in blocks of 50
        writer.append(x[start:start + 64])
    xs = writer.close()
    writer = ShardWriter(tmp_path / "y", "float32")
    writer.append(y)
    ys = writer.close()
    assert xs.shape == (300, 16) and len(xs.files) == 5
    np.testing.assert_array_equal(xs.read(60, 130), x[60:130])
    np.testing.assert_array_equal(xs.take(np.array([[299, 0], [64, 63]])), x[[299, 0, 64, 63]])
    for mode in ("forward", "backward", "intersection"):
        expected = mine_pairs(x, y, k=4, mode=mode, block_size=50)
        pd.testing.assert_frame_equal(mine_pairs(xs, ys, k=4, mode=mode, block_size=50),
                                      expected)
        pd.testing.assert_frame_equal(mine_pairs(x, y, k=4, mode=mode, index="flat"), expected)
    # float16 shards store unit rows rounded to half precision.
    half = ShardWriter(tmp_path / "h", "float16")
    half.append(3 * x)
    np.testing.assert_array_equal(half.close().read(0, 300), x.astype(np.float16))
    ShardWriter(tmp_path / "h").close()  # earlier shards are replaced ...
    (tmp_path / "data" / "keep.txt").parent.mkdir()
    (tmp_path / "data" / "keep.txt").write_text("precious")
    with pytest.raises(ValueError, match="holds no embedding shards"):  # ... nothing else
        ShardWriter(tmp_path / "data")
    assert (tmp_path / "data" / "keep.txt").is_file()


def test_approximate_indexes_against_exact_search():
    x, y, truth = planted_data(1500, 2000, 200, 64, seed=3)
    exact = margin_candidates(x, y, k=4)
    exact_pairs = select_pairs(exact, "intersection", threshold=1.4)
    assert set(zip(exact_pairs.src, exact_pairs.tgt)) == truth
    # (index, least k-NN recall vs exact): 32 lists here, nprobe 24 searches 3/4 of them;
    # 32 codes for 64 dimensions (the default would be 8, too coarse for these tiny sets).
    for params, least in ((IndexParams("ivf", nprobe=24), 0.9),
                          (IndexParams("ivfpq", nprobe=24, pq_m=32, rerank=8), 0.9),
                          (IndexParams("hnsw", ef_search=128), 0.9)):
        c = margin_candidates(x, y, k=4, index=params)
        for side in ("fwd", "bwd"):
            recall = knn_recall(c[f"{side}_ids"], exact[f"{side}_ids"])
            assert recall >= least, (params.kind, side, recall)
            # Found neighbours carry exact cosines (ivfpq's are re-scored from the vectors).
            found = c[f"{side}_ids"] >= 0
            q, db = (x, y) if side == "fwd" else (y, x)
            np.testing.assert_allclose(
                c[f"{side}_sims"][found],
                np.einsum("ij,ij->i", np.repeat(q, 4, 0)[found.ravel()],
                          db[c[f"{side}_ids"][found]]), rtol=1e-5, atol=1e-6)
        pairs = select_pairs(c, "intersection", threshold=1.4)
        got = set(zip(pairs.src, pairs.tgt))
        assert len(got & truth) >= 0.95 * len(truth), (params.kind, len(got & truth))


def test_index_factory_strings_and_bad_index_parameters():
    assert index_factory_string(IndexParams("flat"), 10**6, 384) == "Flat"
    assert index_factory_string(IndexParams("ivf"), 100_000, 384) == "IVF256,Flat"
    assert index_factory_string(IndexParams("ivfpq"), 10**6, 384) == "IVF1024,PQ64x4fs"
    assert index_factory_string(IndexParams("ivfpq", nlist=64, pq_m=16), 500, 64) == \
        "IVF64,PQ16x4fs"
    assert index_factory_string(IndexParams("ivfpq"), 100, 64) == "IVF2,PQ8x4"
    x, y, truth = planted_data(120, 100, 20, 64, seed=4)  # tiny: plain PQ, still works
    exact = mine_pairs(x, y, k=4, threshold=1.4)
    assert set(zip(exact.src, exact.tgt)) >= truth
    for kind in ("ivf", "ivfpq", "hnsw"):
        mined = mine_pairs(x, y, k=4, threshold=1.4, index=kind)
        assert set(zip(mined.src, mined.tgt)) >= truth, kind
    assert index_factory_string(IndexParams("hnsw"), 10, 8) == "HNSW32"
    with pytest.raises(ValueError, match="index must be one of flat, ivf, ivfpq, hnsw, got 'lsh'"):
        mine_pairs(np.ones((3, 4)), np.ones((3, 4)), index="lsh")
    with pytest.raises(ValueError, match="nprobe must be at least 1, got 0"):
        IndexParams("ivf", nprobe=0)
    with pytest.raises(ValueError, match="pq_m must divide the embedding size 64, got 5"):
        index_factory_string(IndexParams("ivfpq", pq_m=5), 1000, 64)


def test_bad_utf8_fails_in_one_line_naming_file_and_line(tmp_path, tiny_encoder_dir, capsys):
    from pipeline import cli

    good = tmp_path / "good.txt"
    good.write_text("Hallo Welt\nGuten Tag\n", encoding="utf-8")
    bad = tmp_path / "bad.txt"
    # The bad byte lies past the first read buffer, so the line must be searched for.
    bad.write_bytes("".join(f"Satz Nummer {i}\n" for i in range(2000)).encode()
                    + b"caf\xe9 au lait\n" + b"noch einer\n")
    with pytest.raises(ValueError, match=r"bad.txt:2001: not valid UTF-8 \(invalid "
                                         r"continuation byte: byte 0xe9 at column 4\)"):
        read_sentences(bad)
    status = cli.main(["mine", "--source", str(good), "--target", str(bad), "--model",
                       str(tiny_encoder_dir), "--output", str(tmp_path / "p.parquet"),
                       "--device", "cpu", "--threads", "1"])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err and "encode" not in err  # fails up front
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "bad.txt:2001: not valid UTF-8" in last


def test_no_pair_above_the_threshold_gives_valid_json_metrics(tmp_path, tiny_encoder_dir,
                                                              monkeypatch):
    from pipeline import cli

    monkeypatch.chdir(tmp_path)  # an ad-hoc output: metrics/mine.json next to p.parquet
    (tmp_path / "a.txt").write_text("Hallo Welt\nGuten Tag\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("Hello world\nGood day\n", encoding="utf-8")
    assert cli.main(["mine", "--source", "a.txt", "--target", "b.txt",  # no params.yaml here
                     "--model", str(tiny_encoder_dir), "--output", "p.parquet", "--k", "1",
                     "--threshold", "99", "--device", "cpu", "--threads", "1",
                     "--catalogue", str(ROOT / "configs/encoders.yaml"),
                     "--index", "ivf", "--nprobe", "1"]) == 0
    text = (tmp_path / "metrics/mine.json").read_text()
    stats = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in {text}"))
    assert stats["pairs"] == 0 and stats["mean_margin"] is None and stats["index"] == "ivf"
    assert len(pd.read_parquet(tmp_path / "p.parquet")) == 0
    assert not list(tmp_path.glob(".mine-*"))  # the temporary shards are gone
