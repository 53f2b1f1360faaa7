"""Margin mining at scale: exact vs. approximate faiss indexes over fp16 shards on disk.

Synthetic unit vectors stand in for sentence embeddings: ``n`` targets, ``n`` sources of which
``planted`` (1 % of ``n``, at least 1,000) are noisy copies of targets (cosine about 0.8) and
the rest unrelated. They are generated chunk by chunk straight into fp16 shards
(``pipeline.evaluation.mining.shards.ShardWriter``), so generating 1,000,000 × 384 never holds a
side in memory; generation is not timed. Each measurement then runs in a fresh subprocess
(so its peak RSS is its own), with the thread count pinned, and times the whole mining
from the shards on disk: opening them, training and filling the indexes, both k-NN
directions, margins and the intersection. It reports wall and CPU time, peak RSS, the
precision/recall of the planted pairs and, for approximate indexes, the recall of the
mined pairs and of the k-NN lists against the exact (``flat``) run on the same data.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/mine.py            # the full table
    .venv/bin/python benchmarks/mine.py --exact-sizes 20000 --large-sizes  # a quick one

Results go to ``benchmarks/results/mine.json`` (``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHUNK = 65536


def planted_count(n: int) -> int:
    """Planted pairs at size ``n``: 1 % of the sources, at least 1,000 (at most ``n``)."""
    return min(n, max(1000, n // 100))


def make_shards(directory: Path, n: int, dim: int, planted: int, seed: int = 0) -> None:
    """Write ``directory/{source,target}`` fp16 shards and ``truth.npy`` chunk by chunk.

    Targets are random unit vectors; source ``i < planted`` is target ``truth[i]`` plus
    noise of norm ~0.75 (cosine ~0.8), the other sources are random.
    """
    from pipeline.evaluation.mining.shards import ShardWriter

    truth = np.random.default_rng([seed, 2]).choice(n, size=planted, replace=False)
    order = np.argsort(truth)
    planted_y = np.empty((planted, dim), dtype=np.float32)
    writer = ShardWriter(directory / "target", "float16")
    for start in range(0, n, CHUNK):
        y = np.random.default_rng([seed, 0, start]).standard_normal(
            (min(CHUNK, n - start), dim), dtype=np.float32)
        y /= np.linalg.norm(y, axis=1, keepdims=True)
        lo, hi = np.searchsorted(truth[order], [start, start + len(y)])
        planted_y[order[lo:hi]] = y[truth[order[lo:hi]] - start]
        writer.append(y)
    writer.close()
    writer = ShardWriter(directory / "source", "float16")
    for start in range(0, n, CHUNK):
        x = np.random.default_rng([seed, 1, start]).standard_normal(
            (min(CHUNK, n - start), dim), dtype=np.float32)
        p = max(0, min(planted - start, len(x)))
        x[:p] = planted_y[start:start + p] + np.float32(0.75 / np.sqrt(dim)) * x[:p]
        writer.append(x)  # unit length: ShardWriter normalises fp16 shards
    writer.close()
    np.save(directory / "truth.npy", truth)


def dense_mine(x: np.ndarray, y: np.ndarray, k: int, threshold: float):
    """The naive way: the full (n, m) similarity matrix, top-k by argpartition, intersection."""
    s = x @ y.T  # (n, m) float32: the whole matrix in memory
    ids_xy = np.argpartition(-s, k - 1, axis=1)[:, :k]  # (n, k)
    mean_x = np.take_along_axis(s, ids_xy, axis=1).mean(axis=1)
    ids_yx = np.argpartition(-s, k - 1, axis=0)[:k, :].T  # (m, k)
    mean_y = np.take_along_axis(s, ids_yx.T, axis=0).mean(axis=0)
    sim_xy = np.take_along_axis(s, ids_xy, axis=1)  # (n, k)
    sim_yx = np.take_along_axis(s, ids_yx.T, axis=0).T  # (m, k)
    fwd_scores = sim_xy / ((mean_x[:, None] + mean_y[ids_xy]) / 2)
    best_f = ids_xy[np.arange(len(x)), fwd_scores.argmax(axis=1)]
    bwd_scores = sim_yx / ((mean_y[:, None] + mean_x[ids_yx]) / 2)
    best_b = ids_yx[np.arange(len(y)), bwd_scores.argmax(axis=1)]
    score_f = fwd_scores.max(axis=1)
    return {(i, int(j)) for i, j in enumerate(best_f)
            if best_b[j] == i and score_f[i] >= threshold}


def worker(args: argparse.Namespace) -> dict:
    """One measurement, in this process."""
    import faiss

    from pipeline.evaluation.mining.faiss_index import IndexParams
    from pipeline.evaluation.mining.margin import margin_candidates, select_pairs
    from pipeline.evaluation.mining.shards import EmbeddingShards

    faiss.omp_set_num_threads(args.threads)
    data = Path(args.data)
    truth = np.load(data / "truth.npy")
    truth_set = set(zip(range(len(truth)), truth.tolist()))
    params = IndexParams(index=args.worker if args.worker != "dense" else "flat",
                         nprobe=args.nprobe[0], ef_search=args.ef_search[0], rerank=args.rerank)
    wall, cpu = time.perf_counter(), time.process_time()
    x, y = EmbeddingShards(data / "source"), EmbeddingShards(data / "target")
    extra: dict = {}
    if args.worker == "dense":
        found = dense_mine(x.read(0, len(x)), y.read(0, len(y)), args.k, args.threshold)
    else:
        c = margin_candidates(x, y, k=args.k, block_size=args.block_size, index=params)
        mined = select_pairs(c, "intersection", args.threshold)
        found = set(zip(mined.src.tolist(), mined.tgt.tolist()))
        if args.save:
            np.savez(args.save, pairs=np.array(sorted(found), dtype=np.int64).reshape(-1, 2),
                     fwd_ids=c["fwd_ids"])
        if params.kind in ("ivf", "ivfpq"):
            extra["index"] = f"nprobe {params.nprobe}"
        elif params.kind == "hnsw":
            extra["index"] = f"efSearch {params.ef_search}"
        if params.kind == "ivfpq":
            extra["index"] += f", rerank {params.rerank}"
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    hits = len(found & truth_set)
    return {
        "method": args.worker, "n": len(x), "dim": x.dim, "k": args.k, **extra,
        "threads": args.threads, "mine_seconds": round(wall, 2), "mine_cpu_seconds": round(cpu, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "pairs": len(found), "planted": len(truth),
        "precision": round(hits / max(len(found), 1), 4), "recall": round(hits / len(truth), 4),
    }


def exact_sample(args: argparse.Namespace) -> dict:
    """Exact k-NN (source → target) of a seeded sample of sources, by brute force over shards."""
    from pipeline.evaluation.mining.faiss_index import knn_recall
    from pipeline.evaluation.mining.shards import EmbeddingShards, normalize

    data = Path(args.data)
    x, y = EmbeddingShards(data / "source"), EmbeddingShards(data / "target")
    rng = np.random.default_rng(7)
    rows = np.sort(rng.choice(len(x), size=min(args.sample, len(x)), replace=False))
    q = normalize(x.take(rows))
    best_s = np.full((len(q), args.k), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(q), args.k), dtype=np.int64)
    for start in range(0, len(y), CHUNK):
        s = q @ normalize(y.read(start, start + CHUNK)).T
        s_all = np.concatenate([best_s, s], axis=1)
        i_all = np.concatenate([best_i, np.arange(start, start + s.shape[1])[None, :]
                                .repeat(len(q), 0)], axis=1)
        top = np.argpartition(-s_all, args.k - 1, axis=1)[:, :args.k]
        best_s, best_i = np.take_along_axis(s_all, top, 1), np.take_along_axis(i_all, top, 1)
    approx = np.load(args.save)["fwd_ids"][rows]
    return {"sample": len(rows), "knn_recall": round(knn_recall(approx, best_i), 4)}


def run_worker(kind: str, data: Path, args: argparse.Namespace, save: Path | None = None,
               setting: int | None = None) -> dict:
    """Run one measurement in a subprocess with the thread count pinned.

    ``setting`` is the ``nprobe`` (ivf, ivfpq) or ``efSearch`` (hnsw) of this run.
    """
    nprobe = setting if setting and kind in ("ivf", "ivfpq") else args.nprobe[0]
    ef_search = setting if setting and kind == "hnsw" else args.ef_search[0]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads),
               OPENBLAS_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, __file__, "--worker", kind, "--data", str(data),
           "--k", str(args.k), "--threads", str(args.threads),
           "--threshold", str(args.threshold), "--block-size", str(args.block_size),
           "--nprobe", str(nprobe), "--ef-search", str(ef_search),
           "--rerank", str(args.rerank), "--sample", str(args.sample)]
    if save:
        cmd += ["--save", str(save)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def ensure_data(root: Path, n: int, dim: int, seed: int) -> tuple[Path, float]:
    """Synthetic shards for size ``n`` (made once, reused); seconds spent making them."""
    data = root / f"n{n}-d{dim}-s{seed}"
    if (data / "truth.npy").is_file():
        return data, 0.0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    start = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--worker", "make", "--data", str(data),
                    "--n", str(n), "--dim", str(dim), "--seed", str(seed)], env=env, check=True)
    return data, time.perf_counter() - start


def pair_recall(approx: Path, exact: Path) -> float:
    """Share of the exact run's mined pairs that the approximate run mined too."""
    a = {tuple(p) for p in np.load(approx)["pairs"].tolist()}
    e = {tuple(p) for p in np.load(exact)["pairs"].tolist()}
    return round(len(a & e) / max(len(e), 1), 4)


def machine() -> dict:
    """CPU model and SIMD flags (lscpu), library versions, load."""
    import faiss

    info = {"cpus_visible": os.cpu_count(), "load_average": round(os.getloadavg()[0], 2),
            "python": platform.python_version(), "numpy": np.__version__,
            "faiss": faiss.__version__}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in lscpu.splitlines():
            if line.startswith("Model name:"):
                info["cpu"] = line.split(":", 1)[1].strip()
            if line.startswith("Flags:"):
                flags = set(line.split(":", 1)[1].split())
                info["simd"] = [f for f in ("avx2", "avx512f") if f in flags]
    except FileNotFoundError:
        info["cpu"] = platform.processor() or platform.machine()
    return info


def row(r: dict, n: int) -> str:
    """One markdown table row."""
    return (f"| {r['method']} | {r.get('index', '')} | {n:,} × {n:,} | {r['mine_seconds']} | "
            f"{r['mine_cpu_seconds']} | {r['peak_rss_mb']:,} | {r['precision']} / {r['recall']} "
            f"| {r.get('pair_recall', '–')} | {r.get('knn_recall', '–')} "
            f"| {r.get('speedup_vs_flat', '–')} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=["make", "dense", "flat", "ivf", "ivfpq", "hnsw",
                                             "exact-sample"], help="run one step here")
    parser.add_argument("--data", help="shard directory (worker)")
    parser.add_argument("--save", help="npz of mined pairs and k-NN ids (worker)")
    parser.add_argument("--n", type=int, default=100_000, help="sentences per side (make)")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    # Unrelated random vectors reach margins of ~1.1 (real embeddings are less uniform, hence
    # LASER's 1.06); the planted pairs score ~2.3.
    parser.add_argument("--threshold", type=float, default=1.3)
    parser.add_argument("--block-size", type=int, default=8192)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[64],
                        help="ivf/ivfpq: one run per value (the first at the large sizes)")
    parser.add_argument("--ef-search", type=int, nargs="+", default=[64],
                        help="hnsw: one run per value")
    parser.add_argument("--reuse-exact", action="store_true",
                        help="reuse the flat run of an earlier call on the same shards")
    parser.add_argument("--rerank", type=int, default=4)
    parser.add_argument("--sample", type=int, default=2000,
                        help="sources whose exact k-NN is brute-forced at the large sizes")
    parser.add_argument("--dense-sizes", type=int, nargs="*", default=[10_000])
    parser.add_argument("--exact-sizes", type=int, nargs="*", default=[100_000],
                        help="sizes run with flat and every approximate index, side by side")
    parser.add_argument("--indexes", nargs="*", default=["ivf", "ivfpq", "hnsw"],
                        choices=["ivf", "ivfpq", "hnsw"])
    parser.add_argument("--large-sizes", type=int, nargs="*", default=[1_000_000],
                        help="sizes run with --large-index only (exact is out of reach)")
    parser.add_argument("--large-index", default="ivfpq", choices=["ivf", "ivfpq", "hnsw"])
    parser.add_argument("--data-root", default="/tmp/mine-bench", help="synthetic shards")
    parser.add_argument("--json", default=str(ROOT / "benchmarks/results/mine.json"))
    args = parser.parse_args()
    if args.worker == "make":
        make_shards(Path(args.data), args.n, args.dim, planted_count(args.n), args.seed)
        return
    if args.worker == "exact-sample":
        print(json.dumps(exact_sample(args)))
        return
    if args.worker:
        print(json.dumps(worker(args)))
        return

    from pipeline.evaluation.mining.faiss_index import knn_recall

    root = Path(args.data_root)
    info = machine()
    print(f"machine: {info.get('cpu')} ({', '.join(info.get('simd', []))}), "
          f"{info['cpus_visible']} CPUs visible, load average {info['load_average']}; "
          f"threads = {args.threads}; faiss {info['faiss']}")
    header = ("| method | search | n × n | wall (s) | CPU (s) | peak RSS (MB) | planted "
              "precision / recall | mined pairs recall vs flat | k-NN recall vs flat | speed-up "
              "vs flat |\n|---|---|---|---|---|---|---|---|---|---|")
    print(header, flush=True)
    results: list[dict] = []
    made: dict[int, float] = {}

    def record(r: dict, n: int) -> None:
        r["data_seconds"] = round(made.get(n, 0.0), 1)
        results.append(r)
        print(row(r, n), flush=True)

    for n in args.dense_sizes:
        data, made[n] = ensure_data(root, n, args.dim, args.seed)
        record(run_worker("dense", data, args), n)
    for n in args.exact_sizes:
        data, made[n] = ensure_data(root, n, args.dim, args.seed)
        exact, exact_json = data / "flat.npz", data / "flat.json"
        if args.reuse_exact and exact_json.is_file():
            flat = json.loads(exact_json.read_text()) | {"reused": True}
        else:
            flat = run_worker("flat", data, args, exact)
            exact_json.write_text(json.dumps(flat))
        record(flat, n)
        for kind in args.indexes:
            for setting in args.ef_search if kind == "hnsw" else args.nprobe:
                saved = data / f"{kind}-{setting}.npz"
                r = run_worker(kind, data, args, saved, setting)
                r["pair_recall"] = pair_recall(saved, exact)
                r["knn_recall"] = round(knn_recall(np.load(saved)["fwd_ids"],
                                                   np.load(exact)["fwd_ids"]), 4)
                r["speedup_vs_flat"] = round(flat["mine_seconds"] / r["mine_seconds"], 2)
                record(r, n)
    for n in args.large_sizes:
        data, made[n] = ensure_data(root, n, args.dim, args.seed)
        saved = data / f"{args.large_index}.npz"
        r = run_worker(args.large_index, data, args, saved)
        sample = run_worker("exact-sample", data, args, saved)
        r["knn_recall"] = f"{sample['knn_recall']} ({sample['sample']:,} sources)"
        record(r, n)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({
        "machine": info, "threads": args.threads, "k": args.k, "threshold": args.threshold,
        "date": time.strftime("%Y-%m-%d"), "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
