"""What pinning the CPU instruction set costs, and what it changes (see pipeline/__init__.py).

Runs the same three workloads in fresh subprocesses under three settings, alternating them
``--repeats`` times and keeping each one's fastest run:

- ``native`` (``MULTIWAY_CPU_ISA=native``): no pins: each library's own choice for this CPU
  (on an Intel CPU with AVX-512: CTranslate2's matrix products on MKL, AVX-512 kernels in MKL,
  numpy and faiss).
- ``avx2`` (the default of every stage): CTranslate2 on oneDNN with AVX2, which is also what
  CTranslate2 picks by itself on an AVX2-only AMD CPU; AVX2 for torch's, numpy's and faiss's
  own kernels; torch's matrix products left to MKL.
- ``mkl_compatible``: ``avx2`` plus MKL's COMPATIBLE branch (``MKL_CBWR=COMPATIBLE``) for
  torch's matrix products, which was meant to give the same bits on Intel and AMD (it did not:
  docs/benchmarks.md), so no stage sets it.

Workloads: (1) translating English Bible verses into German with the committed NMT model and
the translate stage's settings; (2) training steps of a BERT-shaped encoder of
multilingual-e5-small's size (12 layers, 384 wide, random init, seed 0; vocabulary cut to
30k) with an in-batch contrastive loss; (3) exact faiss inner-product k-NN search. Each
reports its time and a SHA-256 of its outputs, so the table shows whether two environments
give the same bytes.

    flock /tmp/cpu.lock .venv/bin/python benchmarks/cpu_isa.py [--repeats 2]

Writes ``benchmarks/results/cpu_isa-<vendor>.json`` (``intel``, ``amd``: the CPU's vendor) and,
where the other vendor's file is there, says which outputs came out the same on both CPUs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks/results"
VENDORS = {"GenuineIntel": "intel", "AuthenticAMD": "amd"}
PIN_KEYS = ("CT2_USE_MKL", "CT2_FORCE_CPU_ISA", "ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY",
            "MKL_CBWR", "OPENBLAS_CORETYPE", "NPY_DISABLE_CPU_FEATURES", "FAISS_SIMD_LEVEL")
ENVS = {
    "native": {"MULTIWAY_CPU_ISA": "native"},
    "avx2": {"MULTIWAY_CPU_ISA": "avx2"},
    "mkl_compatible": {"MULTIWAY_CPU_ISA": "avx2", "MKL_CBWR": "COMPATIBLE"},
}


def _sha(*arrays: object) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(a.tobytes() if hasattr(a, "tobytes") else str(a).encode())
    return h.hexdigest()[:16]


def work_translate(n: int) -> dict:
    from pipeline.config import load_section
    from pipeline.sources.prepare_seed import PrepareSeedConfig, default_bible_db, load_bible
    from pipeline.translate.engine import load_translator
    from pipeline.translate.translate import TranslateConfig

    cfg = load_section(ROOT / "params.yaml", "translate", TranslateConfig)
    seed = load_section(ROOT / "params.yaml", "prepare_seed", PrepareSeedConfig)
    verses = load_bible(default_bible_db(), {"eng_Latn": seed.editions["eng_Latn"]})
    texts = [t for t in verses["eng_Latn"] if t][1000:1000 + n]
    translator = load_translator(
        ROOT / cfg.model_dir, device="cpu", inter_threads=cfg.inter_threads,
        intra_threads=cfg.intra_threads, beam_size=cfg.beam_size,
        max_batch_tokens=cfg.max_batch_tokens, max_decoding_length=cfg.max_decoding_length,
        no_repeat_ngram_size=cfg.no_repeat_ngram_size)
    start = time.perf_counter()
    out = translator.translate(texts, "deu_Latn")
    return {"seconds": time.perf_counter() - start, "sha": _sha("\n".join(out)),
            "sentences": len(texts), "beam_size": cfg.beam_size}


def work_train(steps: int) -> dict:
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = BertModel(BertConfig(vocab_size=30000, hidden_size=384, num_hidden_layers=12,
                                 num_attention_heads=12, intermediate_size=1536))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randint(1000, 30000, (2, 32, 48), generator=gen) for _ in range(steps)]
    start = time.perf_counter()
    for ids in batches:
        emb = [torch.nn.functional.normalize(model(input_ids=x).last_hidden_state.mean(1), dim=-1)
               for x in ids]
        logits = emb[0] @ emb[1].T / 0.05
        loss = torch.nn.functional.cross_entropy(logits, torch.arange(len(logits)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - start
    params = torch.cat([p.detach().flatten() for p in model.parameters()]).numpy()
    return {"seconds": seconds, "seconds_per_step": seconds / steps, "sha": _sha(params)}


def work_faiss(n: int) -> dict:
    import faiss
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 384), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[: n // 2] + 0.1 * rng.standard_normal((n // 2, 384), dtype=np.float32)
    index = faiss.IndexFlatIP(384)
    index.add(x)
    start = time.perf_counter()
    dist, idx = index.search(q, 4)
    return {"seconds": time.perf_counter() - start, "sha": _sha(dist, idx)}


def child(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))
    import pipeline  # noqa: F401  (applies the pins unless MULTIWAY_CPU_ISA=native)

    fn = {"translate": work_translate, "train": work_train, "faiss": work_faiss}[args.child]
    print(json.dumps(fn(args.size)))


def run_child(name: str, workload: str, size: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in PIN_KEYS and k != "MULTIWAY_CPU_ISA"}
    env.update(ENVS[name], OMP_NUM_THREADS="2")
    out = subprocess.run([sys.executable, __file__, "--child", workload, "--size", str(size)],
                         env=env, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_field(key: str) -> str:
    """A field of /proc/cpuinfo's first processor ('model name', 'vendor_id'), or ''."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.split(":", 1)[0].strip() == key:
            return line.split(":", 1)[1].strip()
    return ""


def comparable(other: dict | None, ours: dict) -> bool:
    """Whether two runs of a workload had the same settings (all but their time and output)."""
    timing = {"seconds", "seconds_per_step", "sha"}
    return other is not None and ({k: v for k, v in other.items() if k not in timing}
                                  == {k: v for k, v in ours.items() if k not in timing})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child")
    parser.add_argument("--size", type=int)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    sizes = {"translate": 200, "train": 4, "faiss": 20000}
    results: dict = {name: {} for name in ENVS}
    for _ in range(args.repeats):
        for workload, size in sizes.items():
            for name in ENVS:
                r = run_child(name, workload, size)
                best = results[name].get(workload)
                if best and best["sha"] != r["sha"]:
                    raise SystemExit(f"{name}/{workload}: two runs gave different outputs")
                if not best or r["seconds"] < best["seconds"]:
                    results[name][workload] = r
    flags = Path("/proc/cpuinfo").read_text()
    vendor = VENDORS.get(cpu_field("vendor_id"), "other")
    report = {"cpu": cpu_field("model name") or platform.processor(),
              "avx512f": " avx512f" in flags, "cores": os.cpu_count(),
              "repeats": args.repeats, "sizes": sizes, "results": results}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"cpu_isa-{vendor}.json").write_text(json.dumps(report, indent=2) + "\n")
    others = {f.stem.removeprefix("cpu_isa-"): json.loads(f.read_text())["results"]
              for f in sorted(RESULTS.glob("cpu_isa-*.json")) if f.stem != f"cpu_isa-{vendor}"}
    base = results["native"]
    print(f"{report['cpu']} (avx512f: {report['avx512f']}), fastest of {args.repeats}")
    print(f"{'workload':<10} {'env':<15} {'seconds':>8} {'vs native':>9}  output sha  "
          "same as (here; on the other vendors' CPUs)")
    for workload in sizes:
        for name in ENVS:
            r = results[name][workload]
            same = [o for o in ENVS if o != name and results[o][workload]["sha"] == r["sha"]]
            same += [f"{o} on {v}" for v, res in others.items() for o in ENVS
                     if comparable(res.get(o, {}).get(workload), r)
                     and res[o][workload]["sha"] == r["sha"]]
            print(f"{workload:<10} {name:<15} {r['seconds']:8.2f} "
                  f"{r['seconds'] / base[workload]['seconds']:9.2f}  {r['sha']}  "
                  f"{', '.join(same) or '-'}")


if __name__ == "__main__":
    main()
