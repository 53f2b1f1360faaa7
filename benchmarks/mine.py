"""Margin mining at scale: faiss k-NN in blocks vs. the dense similarity matrix.

Synthetic unit vectors stand in for sentence embeddings: ``n`` targets, ``n`` sources of which
``planted`` are noisy copies of targets (cosine about 0.8) and the rest unrelated. Each
measurement runs in a fresh subprocess (so its peak RSS is its own), with the thread count
pinned, and reports wall and CPU time of the mining, peak RSS and the precision/recall of
the planted pairs.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/mine.py              # the full table
    .venv/bin/python benchmarks/mine.py --worker faiss --n 100000      # one measurement

Peak RSS includes the Python/numpy/faiss baseline and the two embedding matrices
(2 × n × dim × 4 bytes: 307 MB at n = 100,000, dim = 384), which any method has to hold.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_embeddings(n: int, dim: int, planted: int, seed: int = 0):
    """Sources, targets and the planted (source, target) pairs."""
    rng = np.random.default_rng(seed)
    y = rng.standard_normal((n, dim), dtype=np.float32)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    targets = rng.choice(n, size=planted, replace=False)
    x[:planted] = y[targets] + np.float32(0.75 / np.sqrt(dim)) * x[:planted]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, y, set(zip(range(planted), targets.tolist()))


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

    from pipeline.evaluation.mining import mine_pairs

    faiss.omp_set_num_threads(args.threads)
    start = time.perf_counter()
    x, y, truth = make_embeddings(args.n, args.dim, args.planted)
    made = time.perf_counter()
    cpu_made = time.process_time()
    if args.worker == "faiss":
        mined = mine_pairs(x, y, k=args.k, mode="intersection", threshold=args.threshold,
                           block_size=args.block_size)
        found = set(zip(mined.src.tolist(), mined.tgt.tolist()))
    else:
        found = dense_mine(x, y, args.k, args.threshold)
    done = time.perf_counter()
    cpu_done = time.process_time()
    hits = len(found & truth)
    return {
        "method": args.worker, "n": args.n, "dim": args.dim, "k": args.k,
        "threads": args.threads, "mine_seconds": round(done - made, 2),
        "mine_cpu_seconds": round(cpu_done - cpu_made, 2),
        "data_seconds": round(made - start, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "pairs": len(found), "precision": round(hits / max(len(found), 1), 4),
        "recall": round(hits / len(truth), 4),
    }


def measure(method: str, n: int, args: argparse.Namespace) -> dict:
    """Run one measurement in a subprocess with the thread count pinned."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads),
               OPENBLAS_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, __file__, "--worker", method, "--n", str(n), "--dim", str(args.dim),
           "--k", str(args.k), "--threads", str(args.threads), "--planted", str(args.planted),
           "--threshold", str(args.threshold), "--block-size", str(args.block_size)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=["faiss", "dense"], help="run one measurement here")
    parser.add_argument("--n", type=int, default=100_000, help="sentences per side")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--planted", type=int, default=1000)
    # Unrelated random vectors reach margins of ~1.1 (real embeddings are less uniform, hence
    # LASER's 1.06); the planted pairs score ~2.3.
    parser.add_argument("--threshold", type=float, default=1.3)
    parser.add_argument("--block-size", type=int, default=8192)
    parser.add_argument("--faiss-sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dense-sizes", type=int, nargs="+", default=[5_000, 10_000])
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
          f"visible, load average {os.getloadavg()[0]:.2f}; threads = {args.threads}")
    print("| method | n × n | wall (s) | CPU (s) | peak RSS (MB) | planted precision / recall |")
    print("|---|---|---|---|---|---|")
    for method, sizes in (("dense", args.dense_sizes), ("faiss", args.faiss_sizes)):
        for n in sizes:
            r = measure(method, n, args)
            print(f"| {method} | {n:,} × {n:,} | {r['mine_seconds']} | {r['mine_cpu_seconds']} | "
                  f"{r['peak_rss_mb']} | "
                  f"{r['precision']} / {r['recall']} |", flush=True)


if __name__ == "__main__":
    main()
