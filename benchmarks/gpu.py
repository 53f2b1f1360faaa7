"""GPU throughput at the paper profile's shapes, no hub: training, evaluation, transfer, MT.

How to run it on a GPU machine (torch with CUDA; no ctranslate2, mteb or DVC needed), from the
repository root, once transformers and sentence-transformers are importable (e.g. carried
wheels installed with ``pip install --no-deps``; sentence-transformers' own import also needs
scipy and scikit-learn), one command; the JSON comes back under ``$OUT``:

    python3 benchmarks/gpu.py --out "$OUT/gpu-h100.json"

Locally (CPU smoke run of the same code path, tiny model, ~30 s; its numbers mean nothing for
a GPU): ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/gpu.py --tiny --out /tmp/gpu-tiny.json``.

The encoder is XLM-R-base-sized with random weights built from its config, nothing downloaded
(12 layers, hidden 768, 12 heads, FFN 3072, vocabulary 250,002, 514 positions, one token type;
these are set explicitly: ``XLMRobertaConfig()``'s own defaults are BERT's vocabulary and
positions), SDPA attention unless a part says otherwise, fed random token ids (no tokenizer:
every sequence is ``seq_len`` real tokens, no padding). Parts (each one section of the JSON;
a part whose library is missing, or that runs out of GPU memory, is recorded as ``skipped``
with the reason, and the others still run):

1. ``train_multiway``: one optimiser step of multi-way training as ``train_encoder`` runs it
   in the paper profile: the project's ``CachedMultiwayInfoNCELoss`` (GradCache,
   ``pipeline.losses``) over 512 rows x 7 languages (3,584 sentences) of 128 tokens,
   mini-batches of 64, bf16 autocast, AdamW (fused on CUDA, the trainer's default for torch
   >= 2.8) with gradient clipping at 1.0 as the trainer does; every weight trains
   (``freeze_embeddings: false``; no pooler). No activation checkpointing: ``train_encoder``
   refuses it under a cached loss (a third forward pass for no memory saved).
2. ``train_enx``: the En-X regime: the project's ``BilingualInfoNCELoss`` on 512 pairs (1,024
   sentences in one forward/backward), same optimiser and precision; ``train_enx_ckpt`` the
   same with activation checkpointing (``gradient_checkpointing: true``, for comparison);
   ``train_enx_cached`` the project's ``CachedBilingualInfoNCELoss`` (mini-batches of 64),
   how the paper profile trains En-X.
3. ``encode_bf16`` / ``encode_fp32``: evaluation's encoding, inference only, batches of 128
   sentences of 128 tokens, mean pooling; bf16 autocast (how ``evaluate`` runs on a GPU with
   bf16, ``pipeline/devices.py``) vs fp32 (how it ran there before, and runs on the CPU).
4. ``drmim_bf16_sdpa`` / ``drmim_fp32_eager``: one ``train_drmim`` ``finetune`` step at the
   paper profile's settings (``trainable_layers: 12``: the embeddings run without gradient,
   all 12 layers and a dropout + linear 3-class head train; batch 32 of 256 tokens; AdamW,
   lr 2e-5 / head 1e-4, clipping 1.0, the loss read back every step), plus prediction
   (batches of ``eval_batch_size`` 128). ``bf16_sdpa`` is the stage's GPU path (bf16 autocast,
   SDPA with a boolean mask; only EPAR's attention-returning passes are eager),
   ``fp32_eager`` how it ran on a GPU before (and runs on the CPU).
5. ``translate``: the committed NMT model ``data/models/nmt/bible-marian`` through
   ``pipeline.translate.engine.load_translator``, English -> German, beam 4, no-repeat 4-grams:
   on the GPU when CTranslate2 sees one and can run on it (cuBLAS 12), else on the CPU cores
   (the GPU failure is recorded), skipped when ctranslate2 is not installed.

Timing: ``--warmup`` steps (not timed), then ``--steps`` timed steps (50), each between two
``torch.cuda.synchronize()``; median and mean seconds per step. Peak memory:
``torch.cuda.max_memory_allocated`` over the timed steps (weights and optimiser state
included; ``null`` on CPU).

MFU (model FLOPs utilisation) = model FLOPs per step / step seconds / peak dense bf16 FLOPS of
the GPU (looked up from its name: H100 SXM and H200 989 TFLOPS, H100 PCIe 756, H100/H200 NVL
835, A100 312, L40S 362, L40 181, L4 121; an unknown GPU or a CPU gets ``null``;
``--peak-tflops`` overrides). Model FLOPs per step = P x T x (2 N + 4 L s h), where T = tokens
per step (sentences x s), N = parameters of the encoder's matrix multiplies (its Linear
weights, 84.9M for the base size: the embedding tables are lookups and do no multiply-adds,
so the 192M of the 250,002 x 768 word embeddings are not in N), 4 L s h = the attention
scores and their weighted sum (L layers, sequence length s, hidden size h), and P = passes:
1 for inference, 3 for forward + backward, 4 with GradCache (its extra no-grad forward). So
training is 6 N T + 12 L s h T, and GradCache 8 N T + 16 L s h T. Not counted: the forward
recomputed by activation checkpointing (``hfu`` counts it: P + 1), embeddings, norms,
softmax, the loss's similarity matrices (< 0.1 %), the optimiser update.

From the step times the script estimates the paper profile's GPU-hours (``estimate``; every
input that is not read from configs/profiles/paper.yaml or params.yaml is listed under
``assumptions``).

Options: ``--parts`` picks parts (e.g. ``--parts train_multiway encode_bf16``), ``--steps`` /
``--warmup`` the number of steps, ``--device cpu`` forces the CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _shared import NMT_MODEL, ROOT, bible_or_generated

# The package's own import only sets environment variables (the CPU instruction-set pins of
# the stages, pipeline/__init__.py); it must come before ctranslate2 loads, as in a stage.
import pipeline  # noqa: F401

PAPER = ROOT / "configs/profiles/paper.yaml"
PARAMS = ROOT / "params.yaml"

PARTS = ("train_multiway", "train_enx", "train_enx_ckpt", "train_enx_cached", "encode_bf16",
         "encode_fp32", "drmim_bf16_sdpa", "drmim_fp32_eager", "translate")

# Peak dense (no sparsity) bf16 tensor-core TFLOPS by GPU name, first match wins (NVIDIA
# datasheets: the sparse figure halved).
PEAK_BF16_TFLOPS = (
    (r"\bH200 NVL\b", 835.0),
    (r"\bG?H200\b", 989.0),
    (r"\bH100 NVL\b", 835.0),
    (r"\bH100\b.*\bPCIe\b", 756.0),
    (r"\bH100\b", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    (r"\bA100\b", 312.0),
    (r"\bL40S\b", 362.0),
    (r"\bL40\b", 181.0),
    (r"\bL4\b", 121.0),
)


@dataclasses.dataclass(frozen=True)
class Shapes:
    """Model and batch sizes of one run (the paper profile's, or ``--tiny``)."""

    layers: int = 12
    hidden: int = 768
    heads: int = 12
    ffn: int = 3072
    vocab: int = 250002
    positions: int = 514
    langs: int = 7                # English + the six pool languages (params.yaml langs)
    rows: int = 512               # train_encoder.batch_size
    seq_len: int = 128            # train_encoder.max_seq_length
    mini_batch: int = 64          # cached_multiway_infonce.mini_batch_size
    encode_batch: int = 128       # evaluate.batch_size
    encode_seq_len: int = 128
    drmim_batch: int = 32         # train_drmim.batch_size (params.yaml; the profile keeps it)
    drmim_seq_len: int = 256      # train_drmim.max_length
    drmim_eval_batch: int = 128   # train_drmim.eval_batch_size
    translate_sentences: int = 2000
    steps: int = 50
    warmup: int = 5


TINY = Shapes(layers=2, hidden=64, heads=2, ffn=256, vocab=1000, positions=66, rows=8,
              seq_len=16, mini_batch=4, encode_batch=8, encode_seq_len=16, drmim_batch=4,
              drmim_seq_len=32, drmim_eval_batch=8, translate_sentences=16, steps=3, warmup=1)


class Skip(Exception):
    """A part that cannot run here (the message says why)."""


# ---------------------------------------------------------------------------------------
# machine, profile


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def library_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in ("torch", "transformers", "sentence-transformers", "ctranslate2", "scipy",
                 "scikit-learn"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def machine(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
        "platform": platform.platform(), "device": device, "gpu": None,
    }
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if device == "cuda":
            props = torch.cuda.get_device_properties(0)
            info.update(gpu=torch.cuda.get_device_name(0), gpu_count=torch.cuda.device_count(),
                        gpu_memory_gib=round(props.total_memory / 2**30, 1),
                        cuda=torch.version.cuda, capability=f"{props.major}.{props.minor}",
                        tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
    except ImportError:
        pass
    return info


def peak_tflops(gpu: str | None, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, "--peak-tflops"
    if not gpu:
        return None, "no GPU: MFU not defined"
    for pattern, tflops in PEAK_BF16_TFLOPS:
        if re.search(pattern, gpu, flags=re.IGNORECASE):
            return tflops, f"dense bf16 of {gpu!r} (name matched {pattern!r})"
    return None, f"unknown GPU {gpu!r}: pass --peak-tflops for MFU"


def read_yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def profile() -> dict[str, Any]:
    """The paper profile's inputs of the estimate (configs/profiles/paper.yaml over params.yaml)."""
    values = {  # fallbacks: the files' values at the time of writing
        "encoders": 3, "regimes": 2, "profile_seeds": 1, "max_steps": 2000,
        "gradient_checkpointing": True, "multiway_loss": "cached_multiway_infonce",
        "enx_loss": "bilingual_infonce", "eval_models": 9, "drmim_tasks": 3, "drmim_encoders": 3,
        "drmim_methods": 4, "drmim_seeds": 3, "drmim_train_examples": 50000,
        "drmim_test_examples": 5000, "drmim_dev_examples": 320, "drmim_epochs": 2,
        "drmim_batch": 32, "source": "built-in copy (pyyaml or the files missing)",
    }
    try:
        paper, params = read_yaml(PAPER), read_yaml(PARAMS)
    except (ImportError, OSError) as exc:
        values["source"] += f": {exc}"
        return values
    te = {**params["train_encoder"], **paper["train_encoder"]}
    ev, dm = paper["evaluate"], paper["train_drmim"]
    base_dm = params["train_drmim"]
    values.update(
        encoders=len(te["encoders"]), regimes=len(te["regimes"]),
        profile_seeds=len(te["seeds"]), max_steps=te["max_steps"],
        gradient_checkpointing=bool(te["gradient_checkpointing"]),
        multiway_loss=te["loss"]["multiway"], enx_loss=te["loss"]["enx"],
        eval_models=len(ev["models"]),
        drmim_tasks=len(dm["tasks"]), drmim_encoders=len(dm["encoders"]),
        drmim_methods=len(dm.get("methods", base_dm["methods"])),
        drmim_seeds=len(dm.get("seeds", base_dm["seeds"])),
        drmim_train_examples=dm["max_train_examples"],
        drmim_test_examples=dm["max_test_examples"],
        drmim_dev_examples=dm.get("dev_examples", base_dm["dev_examples"]),
        drmim_epochs=dm.get("epochs", base_dm["epochs"]),
        drmim_batch=dm.get("batch_size", base_dm["batch_size"]),
        source="configs/profiles/paper.yaml, params.yaml for the keys it leaves alone",
    )
    return values


# ---------------------------------------------------------------------------------------
# model and timing


def build_backbone(shapes: Shapes, device: str, attn: str, checkpointing: bool = False):
    """A random-weight XLM-R-style encoder (no download), on ``device``."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    config = XLMRobertaConfig(
        vocab_size=shapes.vocab, hidden_size=shapes.hidden, num_hidden_layers=shapes.layers,
        num_attention_heads=shapes.heads, intermediate_size=shapes.ffn,
        max_position_embeddings=shapes.positions, type_vocab_size=1, layer_norm_eps=1e-5,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, attn_implementation=attn,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = XLMRobertaModel(config, add_pooling_layer=False)
    if checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:  # transformers >= 5.x
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def matmul_params(backbone) -> int:
    """N of the FLOPs formula: weights of the encoder's Linear layers."""
    from torch import nn

    return sum(m.weight.numel() for m in backbone.encoder.modules() if isinstance(m, nn.Linear))


def sentence_encoder(backbone, bf16: bool):
    """Backbone + mean pooling with the sentence-transformers call convention.

    An ``nn.Sequential`` so the GradCache loss can look at ``model[0]``; autocast inside the
    forward, as accelerate wraps the trainer's model (every call, the GradCache re-forward
    in the backward pass included, runs under it).
    """
    import torch
    from torch import nn

    class SentenceEncoder(nn.Sequential):
        def forward(self, features):
            mask = features["attention_mask"]
            with torch.autocast(mask.device.type, dtype=torch.bfloat16, enabled=bf16):
                states = self[0](input_ids=features["input_ids"], attention_mask=mask)[0]
                weights = mask.unsqueeze(-1).to(states.dtype)
                pooled = (states * weights).sum(1) / weights.sum(1).clamp(min=1)
            return {"sentence_embedding": pooled.float()}

    return SentenceEncoder(backbone)


def adamw(groups, device: str, fused: bool):
    import torch

    if fused:
        try:
            return torch.optim.AdamW(groups, fused=True)
        except (RuntimeError, TypeError):
            pass
    return torch.optim.AdamW(groups)


def trainer_param_groups(model, lr: float, weight_decay: float = 0.01) -> list[dict]:
    """The HF trainer's groups: no weight decay on biases and LayerNorm weights."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if name.endswith("bias") or "LayerNorm" in name else decay).append(param)
    return [{"params": decay, "lr": lr, "weight_decay": weight_decay},
            {"params": no_decay, "lr": lr, "weight_decay": 0.0}]


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def time_steps(step: Callable[[Any], None], make_batch: Callable[[], Any], device: str,
               warmup: int, steps: int) -> dict[str, Any]:
    """Warm-up steps, then ``steps`` timed ones; seconds per step and peak GPU memory."""
    import torch

    for _ in range(warmup):
        step(make_batch())
    sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        batch = make_batch()
        sync(device)
        start = time.perf_counter()
        step(batch)
        sync(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    return {
        "warmup_steps": warmup, "timed_steps": steps,
        "step_s": {"median": round(statistics.median(times), 5),
                   "mean": round(statistics.fmean(times), 5),
                   "min": round(min(times), 5), "max": round(max(times), 5)},
        "peak_memory_gib": round(peak, 2) if peak is not None else None,
    }


def flops_per_token(n_mm: int, shapes: Shapes, seq_len: int) -> int:
    """Forward FLOPs of one token: 2 N (matrix multiplies) + 4 L s h (attention)."""
    return 2 * n_mm + 4 * shapes.layers * seq_len * shapes.hidden


def rates(result: dict, tokens: int, sentences: int, fwd_flops_token: int, passes: int,
          recompute: bool, peak: float | None, bf16: bool) -> dict:
    """Throughput, achieved TFLOPS, MFU and HFU from a :func:`time_steps` result."""
    seconds = result["step_s"]["median"]
    model_flops = passes * tokens * fwd_flops_token
    hardware_flops = (passes + int(recompute)) * tokens * fwd_flops_token
    achieved = model_flops / seconds / 1e12
    result.update(
        sentences_per_step=sentences, tokens_per_step=tokens,
        tokens_per_s=round(tokens / seconds, 1), sentences_per_s=round(sentences / seconds, 2),
        model_tflop_per_step=round(model_flops / 1e12, 4),
        achieved_tflops=round(achieved, 3),
        flops_passes=passes, recompute_forward=recompute,
        # MFU only against the bf16 peak it is defined for; fp32 runs give achieved TFLOPS.
        mfu=round(achieved / peak, 4) if peak and bf16 else None,
        hfu=(round(hardware_flops / seconds / 1e12 / peak, 4) if peak and bf16 else None),
    )
    return result


def free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------
# parts


def train_part(regime: str, cached: bool, checkpointing: bool, shapes: Shapes, device: str,
               peak: float | None) -> dict:
    """Parts 1 and 2: one optimiser step of ``train_encoder`` with the project's loss."""
    import torch

    name = {("multiway", True): "CachedMultiwayInfoNCELoss",
            ("multiway", False): "MultiwayInfoNCELoss",
            ("enx", True): "CachedBilingualInfoNCELoss",
            ("enx", False): "BilingualInfoNCELoss"}[regime, cached]
    module = "multiway_infonce" if regime == "multiway" else "bilingual_infonce"
    try:
        import importlib

        loss_cls = getattr(importlib.import_module(f"pipeline.losses.{module}"), name)
    except ImportError as exc:
        raise Skip(f"the project's losses (pipeline.losses) need sentence-transformers, whose "
                   f"import failed: {type(exc).__name__}: {exc}") from None
    except AttributeError:
        raise Skip(f"pipeline.losses.{module} has no {name}") from None
    backbone = build_backbone(shapes, device, "sdpa", checkpointing)
    model = sentence_encoder(backbone, bf16=True).train()
    extra = {"mini_batch_size": shapes.mini_batch} if cached else {}
    loss = loss_cls(model, temperature=0.05, **extra)
    columns = shapes.langs if regime == "multiway" else 2
    passes = 4 if cached else 3  # GradCache: one more (no-grad) forward
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(trainer_param_groups(model, 2e-5), device, fused=True)
    mask = torch.ones(shapes.rows, shapes.seq_len, dtype=torch.long, device=device)

    def make_batch():
        ids = torch.randint(5, shapes.vocab, (columns, shapes.rows, shapes.seq_len), device=device)
        return [{"input_ids": ids[c], "attention_mask": mask} for c in range(columns)]

    def step(features):
        total = sum(loss(features).values())  # the trainer sums the named terms
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    result = time_steps(step, make_batch, device, shapes.warmup, shapes.steps)
    sentences = shapes.rows * columns
    n_mm = matmul_params(backbone)
    return {
        "regime": regime, "loss": name, "rows": shapes.rows, "columns": columns,
        "seq_len": shapes.seq_len, "mini_batch_size": shapes.mini_batch if cached else None,
        "activation_checkpointing": checkpointing, "precision": "bf16 autocast",
        "attention": backbone.config._attn_implementation,
        "optimizer": f"AdamW ({'fused' if optimizer.defaults.get('fused') else 'foreach'})",
        **rates(result, sentences * shapes.seq_len, sentences,
                flops_per_token(n_mm, shapes, shapes.seq_len), passes, checkpointing, peak,
                bf16=True),
    }


def encode_part(bf16: bool, shapes: Shapes, device: str, peak: float | None) -> dict:
    """Part 3: evaluation's encoding, inference only."""
    import torch

    backbone = build_backbone(shapes, device, "sdpa")
    model = sentence_encoder(backbone, bf16=bf16).eval()
    mask = torch.ones(shapes.encode_batch, shapes.encode_seq_len, dtype=torch.long, device=device)

    def make_batch():
        ids = torch.randint(5, shapes.vocab, (shapes.encode_batch, shapes.encode_seq_len),
                            device=device)
        return {"input_ids": ids, "attention_mask": mask}

    def step(features):
        with torch.inference_mode():
            model(features)["sentence_embedding"].to("cpu", non_blocking=True)

    result = time_steps(step, make_batch, device, shapes.warmup, shapes.steps)
    n_mm = matmul_params(backbone)
    result = {
        "batch": shapes.encode_batch, "seq_len": shapes.encode_seq_len,
        "precision": "bf16 autocast" if bf16 else "fp32",
        "attention": backbone.config._attn_implementation,
        **rates(result, shapes.encode_batch * shapes.encode_seq_len, shapes.encode_batch,
                flops_per_token(n_mm, shapes, shapes.encode_seq_len), 1, False, peak, bf16),
    }
    return result


def drmim_part(bf16: bool, attn: str, shapes: Shapes, device: str, peak: float | None) -> dict:
    """Part 4: a ``train_drmim`` ``finetune`` step (all layers trained) and prediction."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    backbone = build_backbone(shapes, device, attn)
    backbone.embeddings.requires_grad_(False)  # the FeatureStore's frozen bottom
    layers = backbone.encoder.layer
    head = nn.Sequential(nn.Dropout(0.1), nn.Linear(shapes.hidden, 3)).to(device)
    trainable = [*layers.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW([{"params": list(layers.parameters()), "lr": 2e-5},
                                   {"params": list(head.parameters()), "lr": 1e-4}],
                                  weight_decay=0.01)

    def logits_of(ids, mask):
        with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=bf16):
            with torch.no_grad():
                x = backbone.embeddings(input_ids=ids)
            if attn == "eager":  # additive fp32 mask, as the stage builds it
                ext = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
            else:  # SDPA: boolean (True: attend), as the stage's GPU path builds it
                ext = mask[:, None, None, :].bool()
            for layer in layers:
                out = layer(x, ext)
                x = out[0] if isinstance(out, tuple) else out
            weights = mask[..., None].to(x.dtype)
            return head((x * weights).sum(1) / weights.sum(1).clamp(min=1)).float()

    def make_batch(rows):
        ids = torch.randint(5, shapes.vocab, (rows, shapes.drmim_seq_len), device=device)
        labels = torch.randint(0, 3, (rows,), device=device)
        return ids, torch.ones_like(ids), labels

    def train_step(batch):
        ids, mask, labels = batch
        loss = F.cross_entropy(logits_of(ids, mask), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        loss.item()  # the stage reads the loss back every step

    def predict_step(batch):
        ids, mask, _ = batch
        with torch.no_grad():
            logits_of(ids, mask).argmax(-1).tolist()

    backbone.train()
    head.train()
    result = time_steps(train_step, lambda: make_batch(shapes.drmim_batch), device,
                        shapes.warmup, shapes.steps)
    n_mm = matmul_params(backbone)
    per_token = flops_per_token(n_mm, shapes, shapes.drmim_seq_len)
    tokens = shapes.drmim_batch * shapes.drmim_seq_len
    result = {
        "method": "finetune", "trainable_layers": shapes.layers, "batch": shapes.drmim_batch,
        "seq_len": shapes.drmim_seq_len, "precision": "bf16 autocast" if bf16 else "fp32",
        "attention": backbone.config._attn_implementation,
        **rates(result, tokens, shapes.drmim_batch, per_token, 3, False, peak, bf16),
    }
    backbone.eval()
    head.eval()
    predict_steps = max(1, shapes.steps // 2)
    predict = time_steps(predict_step, lambda: make_batch(shapes.drmim_eval_batch), device,
                         shapes.warmup, predict_steps)
    result["predict"] = {
        "batch": shapes.drmim_eval_batch,
        **rates(predict, shapes.drmim_eval_batch * shapes.drmim_seq_len, shapes.drmim_eval_batch,
                per_token, 1, False, peak, bf16),
    }
    return result


def english_sentences(n: int) -> tuple[list[str], str]:
    """``n`` English sentences: Bible verses when ``prepare_seed`` has run, else generated."""
    lines, verses = bible_or_generated(n)
    return lines, ("Bible verses (data/seed)" if verses
                   else "generated lines of 8-40 Bible-vocabulary words")


def translate_part(shapes: Shapes, cores: int) -> dict:
    """Part 5: the committed NMT model through the pipeline's CTranslate2 engine."""
    import importlib.util

    if importlib.util.find_spec("ctranslate2") is None:
        raise Skip("ctranslate2 is not installed")
    try:
        # The engine imports ctranslate2 itself, after loading cuBLAS 12 where it can.
        from pipeline.translate.engine import load_translator
    except ImportError as exc:
        raise Skip(f"pipeline.translate.engine cannot be imported: {type(exc).__name__}: "
                   f"{exc}") from None
    try:
        from pipeline.translate.cuda import import_ctranslate2  # cuBLAS 12 first

        ctranslate2 = import_ctranslate2()
    except ImportError:
        import ctranslate2

    if not (NMT_MODEL / "model.bin").is_file():
        raise Skip(f"{NMT_MODEL.relative_to(ROOT)} has no model.bin")
    lang, beam = "deu_Latn", 4
    texts, source = english_sentences(shapes.translate_sentences)
    options = dict(beam_size=beam, max_decoding_length=256, no_repeat_ngram_size=4)
    gpu_error = None
    translator = None
    if ctranslate2.get_cuda_device_count() > 0:
        try:
            translator = load_translator(NMT_MODEL, device="cuda", max_batch_tokens=8192,
                                         **options)
            # cuBLAS loads at the first matrix product: a missing libcublas fails here.
            translator.translate(texts[:4], lang)
        except Exception as exc:  # noqa: BLE001 - any GPU failure falls back to the CPU
            gpu_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            translator = None
    else:
        gpu_error = "CTranslate2 sees no CUDA device"
    if translator is None:
        translator = load_translator(NMT_MODEL, device="cpu", inter_threads=cores,
                                     intra_threads=1, max_batch_tokens=2048, **options)
    sources = translator.encode(texts, lang)
    list(translator.translate_tokens(sources[: max(4, len(sources) // 20)], lang))  # warm-up
    start = time.perf_counter()
    outputs = list(translator.translate_tokens(sources, lang))
    seconds = time.perf_counter() - start
    target_tokens = sum(len(o) for o in outputs)
    return {
        "model": str(NMT_MODEL.relative_to(ROOT)), "target": lang, "sentences": len(texts),
        "text": source, "device": translator.device, "compute_type": translator.compute_type,
        "gpu_unavailable_reason": gpu_error if translator.device != "cuda" else None,
        "threads": (None if translator.device == "cuda"
                    else {"inter_threads": cores, "intra_threads": 1}),
        "beam_size": beam, "max_batch_tokens": translator.options.max_batch_tokens,
        "no_repeat_ngram_size": 4, "seconds": round(seconds, 3),
        "source_tokens": sum(len(s) for s in sources), "target_tokens": target_tokens,
        "target_tokens_per_s": round(target_tokens / seconds, 1),
        "sentences_per_s": round(len(texts) / seconds, 2),
    }


def run_part(name: str, fn: Callable[[], dict], device: str) -> dict:
    """Run one part; a missing library, a Skip or running out of GPU memory is a skip."""
    print(f"[gpu.py] {name} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        result = {"status": "ok", **fn()}
    except Skip as exc:
        result = {"status": "skipped", "reason": str(exc)}
    except ImportError as exc:
        result = {"status": "skipped",
                  "reason": f"a library is missing: {type(exc).__name__}: {exc}"}
    except Exception as exc:  # noqa: BLE001 - one part's failure must not lose the others
        if type(exc).__name__ == "OutOfMemoryError":
            result = {"status": "skipped", "reason": f"out of GPU memory at these shapes: "
                                                     f"{str(exc).splitlines()[0]}"}
        else:
            result = {"status": "error", "reason": f"{type(exc).__name__}: {exc}",
                      "traceback": traceback.format_exc(limit=6).splitlines()[-8:]}
    result["wall_s"] = round(time.perf_counter() - start, 2)
    free(device)
    status = result["status"] + (f": {result['reason']}" if result["status"] != "ok" else "")
    print(f"[gpu.py] {name}: {status} ({result['wall_s']} s)", file=sys.stderr, flush=True)
    return result


# ---------------------------------------------------------------------------------------
# estimate


def median_step(parts: dict, name: str, key: str = "step_s") -> float | None:
    part = parts.get(name, {})
    if part.get("status") != "ok":
        return None
    return part[key]["median"]


def estimate(parts: dict, prof: dict, args: argparse.Namespace) -> dict:
    """The paper profile's GPU-hours from the measured step times (one GPU of this kind)."""
    hours: dict[str, Any] = {}
    assumptions = [
        "One GPU of this kind, nothing else running; the runs' start-up, model loading and "
        "saving, checkpoints, dev-loss passes, tokenisation and data loading are not counted.",
        "Every sequence is as long as its limit (128 tokens for training and evaluation, 256 "
        "for train_drmim): an upper bound, since batches of shorter sentences are padded only "
        "to their longest sentence.",
        "mbert-base and me5-base cost what the XLM-R-base-sized model costs (the same 12 x 768 "
        "layers; mBERT's 119,547-token vocabulary makes its optimiser update a little cheaper).",
    ]
    seeds = args.encoder_seeds
    ckpt = prof["gradient_checkpointing"]
    # The parts that run each regime as the profile configures it.
    enx_part = {"cached_bilingual_infonce": "train_enx_cached"}.get(
        prof["enx_loss"], "train_enx_ckpt" if ckpt else "train_enx")
    mw = median_step(parts, "train_multiway")
    enx = median_step(parts, enx_part)
    runs = prof["encoders"] * seeds * prof["regimes"]
    per_step = prof["encoders"] * prof["max_steps"] / 3600  # hours per second of a step
    if mw is not None and enx is not None:
        per_seed = per_step * (mw + enx)
        train = {"gpu_hours": round(per_seed * seeds, 2), "per_seed_gpu_hours": round(per_seed, 2),
                 "runs": runs, "steps_per_run": prof["max_steps"],
                 "step_s": {"multiway": mw, "enx": enx}, "enx_part": enx_part}
        for other in ("train_enx", "train_enx_ckpt", "train_enx_cached"):
            if other != enx_part and (alt := median_step(parts, other)) is not None:
                train[f"gpu_hours_with_{other}"] = round(seeds * per_step * (mw + alt), 2)
        hours["train_encoder"] = train
    else:
        hours["train_encoder"] = {"gpu_hours": None,
                                  "reason": f"train_multiway or {enx_part} did not run"}
    assumptions.append(
        f"train_encoder: multi-way with {prof['multiway_loss']} without activation "
        f"checkpointing (train_multiway); En-X with {prof['enx_loss']}"
        f"{' with activation checkpointing' if enx_part.endswith('ckpt') else ''} ({enx_part}), "
        "as configs/profiles/paper.yaml sets them"
        + ("; it sets gradient_checkpointing: true, which train_encoder refuses under a cached "
           "loss, so the multi-way runs need it off" if ckpt else "") + ".")
    if seeds != prof["profile_seeds"]:
        assumptions.append(
            f"train_encoder: {seeds} seeds per encoder and regime (--encoder-seeds); "
            f"configs/profiles/paper.yaml lists {prof['profile_seeds']}: per_seed_gpu_hours x "
            f"{prof['profile_seeds']} is its figure.")

    evaluate: dict[str, Any] = {"models": prof["eval_models"], "texts_per_model": args.eval_texts}
    for name in ("encode_bf16", "encode_fp32"):
        part = parts.get(name, {})
        if part.get("status") == "ok":
            rate = part["sentences_per_s"]
            evaluate[f"gpu_hours_{name.split('_')[1]}"] = round(
                prof["eval_models"] * args.eval_texts / rate / 3600, 2)
            evaluate[f"gpu_hours_per_million_texts_{name.split('_')[1]}"] = round(
                1e6 / rate / 3600, 3)
    hours["evaluate"] = evaluate
    assumptions.append(
        f"evaluate: {args.eval_texts:,} texts encoded per model (--eval-texts), a guess for "
        "the paper suite restricted to the evaluated languages (Tatoeba, BUCC, FLORES and "
        "NTREX pairs, STS17/22, MASSIVE, MTOP, Amazon counterfactual): its size was not counted "
        "(that needs the hub); mteb's own work (scoring, k-NN, classifiers) is not counted.")

    dm: dict[str, Any] = {}
    steps = math.ceil(prof["drmim_train_examples"] / prof["drmim_batch"]) * prof["drmim_epochs"]
    langs = args.drmim_test_langs
    predict_seqs = prof["drmim_test_examples"] * langs + prof["drmim_dev_examples"]
    factor = args.drmim_cost_factor
    seeds_items = prof["drmim_tasks"] * prof["drmim_encoders"] * prof["drmim_seeds"]
    for name in ("drmim_bf16_sdpa", "drmim_fp32_eager"):
        part = parts.get(name, {})
        if part.get("status") != "ok":
            continue
        # One seed of one item: every method's training (factor x finetune steps) and
        # every method's predictions.
        train_s = steps * part["step_s"]["median"] * factor
        predict_s = prof["drmim_methods"] * predict_seqs / part["predict"]["sentences_per_s"]
        dm[f"gpu_hours_{name[6:]}"] = round(seeds_items * (train_s + predict_s) / 3600, 2)
    dm.update(items=prof["drmim_tasks"] * prof["drmim_encoders"],
              runs=seeds_items * prof["drmim_methods"], steps_per_run=steps,
              finetune_step_equivalents_per_seed=factor,
              predicted_sequences_per_run=predict_seqs)
    if not any(k.startswith("gpu_hours") for k in dm):
        dm["reason"] = "no train_drmim part ran"
    hours["train_drmim"] = dm
    assumptions += [
        f"train_drmim: every task fills max_train_examples ({prof['drmim_train_examples']:,}; "
        "TyDiQA-GoldP's English training set is smaller), so "
        f"{steps:,} steps of batch {prof['drmim_batch']} per run.",
        f"train_drmim: the {prof['drmim_methods']} methods of a seed cost {factor} finetune "
        "steps per step together (finetune 1 + DR-MIM 2.2 + its tie-only variant 2.2 + EPAR "
        "2.7: the ratios of their CPU run times in docs/benchmarks.md 'Downstream transfer', "
        "measured with one trainable layer; --drmim-cost-factor).",
        f"train_drmim: each run predicts {prof['drmim_test_examples']:,} test examples in "
        f"{langs} languages (--drmim-test-langs, a mean over XNLI 15, PAWS-X 7, TyDiQA 9) plus "
        f"{prof['drmim_dev_examples']} dev examples.",
        "Translation is not in the estimate: the paper profile translates with NLLB-200 "
        "(convert_nmt), not the committed Marian model timed here.",
    ]
    totals = {}
    for label, enc, drm in (("bf16", "gpu_hours_bf16", "gpu_hours_bf16_sdpa"),
                            ("fp32_eval_and_drmim", "gpu_hours_fp32", "gpu_hours_fp32_eager")):
        pieces = [hours["train_encoder"].get("gpu_hours"), evaluate.get(enc), dm.get(drm)]
        totals[label] = round(sum(pieces), 2) if all(p is not None for p in pieces) else None
    return {"gpu_hours": hours, "total_gpu_hours": totals, "profile": prof,
            "assumptions": assumptions}


# ---------------------------------------------------------------------------------------
# main


def summary(result: dict) -> str:
    peak = result["peak_bf16_tflops"]
    lines = [f"GPU benchmark ({'TINY, ' if result['tiny'] else ''}device "
             f"{result['machine']['gpu'] or 'cpu: ' + result['machine']['cpu']}, peak dense "
             f"bf16 {f'{peak:g} TFLOPS' if peak else 'unknown: no MFU'})",
             f"{'part':24s} {'status':8s} {'step s':>9s} {'tokens/s':>12s} {'sent/s':>10s} "
             f"{'TFLOPS':>8s} {'MFU':>6s} {'peak GiB':>8s}"]
    for name, part in result["parts"].items():
        if part["status"] != "ok":
            lines.append(f"{name:24s} {part['status']:8s} {part['reason']}")
            continue
        if name == "translate":
            lines.append(f"{name:24s} ok       {'':>9s} {part['target_tokens_per_s']:>12,.0f} "
                         f"{part['sentences_per_s']:>10,.1f}  ({part['device']}, "
                         f"{part['compute_type']}, beam {part['beam_size']}; target tokens/s)")
            continue
        mfu = f"{part['mfu']:.1%}" if part.get("mfu") is not None else "-"
        mem = part["peak_memory_gib"] if part["peak_memory_gib"] is not None else "-"
        lines.append(f"{name:24s} ok       {part['step_s']['median']:>9.4f} "
                     f"{part['tokens_per_s']:>12,.0f} {part['sentences_per_s']:>10,.1f} "
                     f"{part['achieved_tflops']:>8.3f} {mfu:>6s} {mem:>8}")
        if "predict" in part:
            p = part["predict"]
            lines.append(f"{'  predict':24s} ok       {p['step_s']['median']:>9.4f} "
                         f"{p['tokens_per_s']:>12,.0f} {p['sentences_per_s']:>10,.1f} "
                         f"{p['achieved_tflops']:>8.3f}")
    est = result["estimate"]
    lines.append("Paper profile, estimated GPU-hours on this device"
                 + (" (TINY run: meaningless):" if result["tiny"] else ":"))
    for stage, values in est["gpu_hours"].items():
        shown = {k: v for k, v in values.items() if k.startswith("gpu_hours") or k == "reason"}
        lines.append(f"  {stage}: {json.dumps(shown)}")
    lines.append(f"  total: {json.dumps(est['total_gpu_hours'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true",
                        help="tiny model and batches, few steps: a CPU smoke run of the same code")
    parser.add_argument("--out", help="write the JSON here (default: benchmarks/results/"
                        "gpu-<device>.json; a --tiny run writes only where told)")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--steps", type=int, help="timed steps per part (default 50; tiny 3)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 5; tiny 1)")
    parser.add_argument("--peak-tflops", type=float,
                        help="peak dense bf16 TFLOPS of the GPU (when its name is not known)")
    parser.add_argument("--encoder-seeds", type=int, default=3,
                        help="train_encoder seeds per encoder and regime in the estimate")
    parser.add_argument("--eval-texts", type=int, default=3_000_000,
                        help="texts encoded per evaluated model in the estimate (a guess)")
    parser.add_argument("--drmim-test-langs", type=int, default=10,
                        help="test languages per train_drmim task in the estimate")
    parser.add_argument("--drmim-cost-factor", type=float, default=8.1,
                        help="finetune-step equivalents of one step of every method of a seed")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)

    shapes = TINY if args.tiny else Shapes()
    shapes = dataclasses.replace(shapes, steps=args.steps or shapes.steps,
                                 warmup=args.warmup if args.warmup is not None else shapes.warmup)
    try:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    device = args.device if args.device != "auto" else ("cuda" if has_cuda else "cpu")
    if device == "cuda" and not has_cuda:
        parser.error("--device cuda: torch sees no CUDA device")
    if device == "cpu" and not args.tiny and args.device != "cpu":
        parser.error("no CUDA device: the full sizes need a GPU (--tiny for a CPU smoke run, "
                     "--device cpu to insist)")
    info = machine(device)
    peak, peak_source = peak_tflops(info["gpu"], args.peak_tflops)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    jobs: dict[str, Callable[[], dict]] = {
        "train_multiway": lambda: train_part("multiway", True, False, shapes, device, peak),
        "train_enx": lambda: train_part("enx", False, False, shapes, device, peak),
        "train_enx_ckpt": lambda: train_part("enx", False, True, shapes, device, peak),
        "train_enx_cached": lambda: train_part("enx", True, False, shapes, device, peak),
        "encode_bf16": lambda: encode_part(True, shapes, device, peak),
        "encode_fp32": lambda: encode_part(False, shapes, device, peak),
        "drmim_bf16_sdpa": lambda: drmim_part(True, "sdpa", shapes, device, peak),
        "drmim_fp32_eager": lambda: drmim_part(False, "eager", shapes, device, peak),
        "translate": lambda: translate_part(shapes, cores or 1),
    }
    started = time.perf_counter()
    parts = {name: run_part(name, jobs[name], device) for name in PARTS if name in args.parts}
    result = {
        "benchmark": "benchmarks/gpu.py", "tiny": args.tiny,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git": git_revision(), "machine": info, "libraries": library_versions(),
        "shapes": dataclasses.asdict(shapes), "peak_bf16_tflops": peak, "peak_source": peak_source,
        "mfu_formula": ("MFU = P x T x (2 N + 4 L s h) / step seconds / peak dense bf16 FLOPS; "
                        "T tokens per step, N weights of the encoder's Linear layers, L layers, "
                        "s sequence length, h hidden size, P passes (1 inference, 3 forward + "
                        "backward, 4 with GradCache's extra forward); HFU adds the forward "
                        "recomputed by activation checkpointing (P + 1)"),
        "parts": parts,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    result["estimate"] = estimate(parts, profile(), args)
    if args.tiny:
        result["estimate"]["assumptions"].insert(
            0, "TINY RUN: a 2-layer, 64-wide model on small batches; these hours are meaningless.")
    text = json.dumps(result, indent=2)
    out = args.out
    if out is None and not args.tiny:
        slug = re.sub(r"[^a-z0-9]+", "-", (info["gpu"] or "cpu").lower()).strip("-")
        out = str(ROOT / f"benchmarks/results/gpu-{slug}.json")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    print(summary(result))
    if out:
        print(f"written: {out}")
    return 1 if any(p["status"] == "error" for p in parts.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
