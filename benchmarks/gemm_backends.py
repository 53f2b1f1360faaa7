"""Which float32 matrix-product backend is fastest on this CPU, for BERT's feed-forward shape.

The torch stages (training, evaluation, DR-MIM) spend their time in float32 matrix products,
which torch runs on MKL. This times one product of the shape of multilingual-e5-small's
feed-forward layer, a batch of 2,048 token states (2,048 × 384 → 1,536), in one process with
the project's CPU pins and 2 threads, through each backend at hand: ``torch.nn.Linear`` (MKL),
the same layer converted to oneDNN (``torch.utils.mkldnn``), ``torch.mm`` (MKL) and numpy's
``@`` (OpenBLAS). Best of ``--repeats`` rounds of 30 products each, in GFLOPS.

    .venv/bin/python benchmarks/gemm_backends.py [--repeats 3]

Results in docs/benchmarks.md ("On an AVX2-only AMD EPYC").
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import pipeline  # noqa: E402,F401  (the CPU pins, before torch loads, as in every stage)

ROWS, IN, OUT = 2048, 384, 1536


def gflops(fn: Callable[[], object], n: int = 30) -> float:
    """GFLOPS of ``n`` calls of ``fn`` after three warm-up calls."""
    for _ in range(3):
        fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return 2 * ROWS * IN * OUT * n / (time.perf_counter() - start) / 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    import torch
    from torch.utils import mkldnn

    torch.manual_seed(0)
    torch.set_num_threads(2)
    linear = torch.nn.Linear(IN, OUT).eval()
    onednn = mkldnn.to_mkldnn(torch.nn.Sequential(linear))
    x = torch.randn(ROWS, IN)
    w = linear.weight.detach().T.contiguous()
    xn, wn = x.numpy(), w.numpy()
    backends = {
        "torch.nn.Linear (MKL)": lambda: linear(x),
        "torch.nn.Linear on oneDNN": lambda: onednn(x.to_mkldnn()),
        "torch.mm (MKL)": lambda: torch.mm(x, w),
        "numpy @ (OpenBLAS)": lambda: xn @ wn,
    }
    best = dict.fromkeys(backends, 0.0)
    with torch.no_grad():
        for _ in range(args.repeats):
            for name, fn in backends.items():
                best[name] = max(best[name], gflops(fn))
    for name, value in best.items():
        print(f"{name:<28} {value:7.1f} GFLOPS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
