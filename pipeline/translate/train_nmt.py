"""Train the project's own multilingual English→X NMT model and export it to CTranslate2.

No pretrained NMT model can be downloaded on the project's offline machines, so the default
profile trains one on the Bible's human translations (``prepare_seed``'s ``nmt_train`` split,
chapter-disjoint from the verses the pipeline later translates).

The model is a standard Marian transformer (``transformers.MarianMTModel``) so that
CTranslate2's Marian converter handles it and the same translation code serves OPUS-MT
models. Conventions, as in OPUS-MT multi-target models:

- one sentencepiece (unigram) vocabulary shared by source and target, ``</s>`` = 0,
  ``<unk>`` = 1, then one ``>>{code}<<`` target tag per pool language, then the pieces; the
  Marian ``<pad>`` (also the decoder start token) is appended as the *last* id, because the
  CTranslate2 converter requires it there;
- the target tag is the first source token: ``>>deu_Latn<< ▁In ▁the ▁beginning ... </s>``.

Training is a plain token-batched loop (label-smoothed cross-entropy, AdamW, inverse square
root schedule) with a wall-time budget per run; it checkpoints every ``eval_every`` steps
(atomically) and resumes from the last checkpoint when restarted. ``<work_dir>`` holds the
fingerprint of everything the model depends on (:func:`fingerprint_parts`); state of another
fingerprint (checkpoint, sentencepiece model) is discarded, never resumed. A run that
``max_minutes`` stops before ``max_steps`` fails after its checkpoint (a rerun continues),
unless ``allow_partial`` accepts it. Each evaluation rewrites the training log in
``<work_dir>/log`` (DVCLive: step, epoch, train and dev loss; ``dvc plots show
data/work/train_nmt/log/plots/metrics`` while it trains). At the end the HF model is saved to
``<work_dir>/hf_model``, converted to CTranslate2 (int8) in ``output_dir`` and scored with
chrF and BLEU on the dev split, per language.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from pipeline import langs as langmod
from pipeline.config import LangsConfig, to_dict
from pipeline.io import atomic_path, read_table
from pipeline.live import write_log
from pipeline.runtime import (
    claim_work_dir,
    file_hash,
    resolve_device,
    seed_everything,
    training_parts,
    write_meta,
)


@dataclasses.dataclass(frozen=True)
class TrainNmtConfig:
    """``train_nmt``: train the project's own multilingual English→X Marian model."""

    # Parallel training table (``id`` + one column per language).
    train: str = "data/seed/bible_nmt_train.parquet"
    # Held-out dev table (chapter-disjoint from ``train``).
    dev: str = "data/seed/bible_nmt_dev.parquet"
    vocab_size: int = 12000  # Shared sentencepiece vocabulary size.
    d_model: int = 256  # Transformer width.
    encoder_layers: int = 6  # Encoder depth.
    decoder_layers: int = 3  # Decoder depth.
    heads: int = 4  # Attention heads.
    ffn_dim: int = 1024  # Feed-forward width.
    dropout: float = 0.1  # Dropout.
    max_tokens: int = 128  # Longer sequences (in subwords) are truncated.
    batch_tokens: int = 16384  # Approximate target tokens per batch.
    lr: float = 1.0e-3  # Peak learning rate (inverse-square-root schedule after warm-up).
    warmup_steps: int = 1000  # Linear warm-up steps.
    max_steps: int = 4909  # Training stops after this many updates...
    # ...or after this much wall time of one run, whichever comes first (a checkpoint is saved; 0
    # disables it).
    max_minutes: float = 240.0
    # Accept a model that ``max_minutes`` stopped before ``max_steps`` (otherwise the stage fails
    # and a rerun continues from the checkpoint).
    allow_partial: bool = False
    eval_every: int = 500  # Steps between dev-loss evaluations and checkpoints.
    dev_sentences: int = 300  # Dev sentences per language scored with chrF/BLEU at the end.
    beam_size: int = 2  # Beam used for the dev translations.
    device: str = "auto"  # ``auto``, ``cpu`` or ``cuda``.
    threads: int = 2  # CPU threads for torch.
    seed: int = 13  # Random seed.
    quantization: str = "int8"  # CTranslate2 weight type of the exported model.
    # CTranslate2 model directory (committed to git; ~10 MB at int8).
    output_dir: str = "data/models/nmt/bible-marian"
    # Checkpoints and the HF model (resumable; not committed).
    work_dir: str = "data/work/train_nmt"

logger = logging.getLogger(__name__)

#: What the training log (DVCLive, ``<work_dir>/log``, rewritten at each evaluation) holds.
LOGGED = ("step", "epoch", "train_loss", "dev_loss")

EOS_ID, UNK_ID = 0, 1
# Target tag put in front of the source (a single vocabulary piece), as in OPUS-MT models.
TARGET_TAG = ">>{code}<<"
# Fields that do not change the trained model: a rerun may change them and still resume.
_RESUME_NEUTRAL = ("max_minutes", "allow_partial", "dev_sentences", "beam_size", "device",
                   "threads", "quantization", "output_dir", "work_dir")


def _pairs(df: pd.DataFrame, source: str, targets: tuple[str, ...]) -> pd.DataFrame:
    """Long table of (lang, src, tgt) for every non-empty translation of every row."""
    rows = []
    for lang in targets:
        ok = (df[source].str.len() > 0) & (df[lang].str.len() > 0)
        rows.append(
            pd.DataFrame({"lang": lang, "src": df.loc[ok, source], "tgt": df.loc[ok, lang]})
        )
    return pd.concat(rows, ignore_index=True)


def train_sentencepiece(texts: list[str], tags: list[str], vocab_size: int, path: Path) -> None:
    """Train the shared unigram sentencepiece model into ``path`` (atomically).

    The target tags become single pieces.
    """
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=0.9995,
        eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1, pad_id=-1,
        eos_piece="</s>", unk_piece="<unk>",
        user_defined_symbols=tags,
        input_sentence_size=300_000, shuffle_input_sentence=True,
        num_threads=2, minloglevel=2,
    )
    with atomic_path(path) as tmp:
        tmp.write_bytes(model.getvalue())


class _Batches:
    """Token-budget batches of a tokenised parallel corpus, reshuffled every epoch."""

    def __init__(self, src: list[list[int]], tgt: list[list[int]], batch_tokens: int, seed: int):
        self.src, self.tgt, self.batch_tokens, self.seed = src, tgt, batch_tokens, seed

    def epoch(self, epoch: int) -> list[np.ndarray]:
        """Batches of example indices for one epoch (deterministic given seed and epoch)."""
        rng = np.random.default_rng(self.seed + epoch)
        order = rng.permutation(len(self.src))
        # Sort within chunks of 100 batches' worth so batches hold similar lengths
        # (little padding) while the epoch order stays random.
        chunk = 100 * max(1, self.batch_tokens // 32)
        batches: list[np.ndarray] = []
        for start in range(0, len(order), chunk):
            part = order[start : start + chunk]
            lengths = [len(self.tgt[i]) + len(self.src[i]) for i in part]
            part = part[np.argsort(lengths, kind="stable")]
            cur: list[int] = []
            longest = 0
            for i in part:
                longest_new = max(longest, len(self.src[i]), len(self.tgt[i]))
                if cur and longest_new * (len(cur) + 1) > self.batch_tokens:
                    batches.append(np.array(cur))
                    cur, longest_new = [], max(len(self.src[i]), len(self.tgt[i]))
                cur.append(int(i))
                longest = longest_new
            if cur:
                batches.append(np.array(cur))
        rng.shuffle(batches)
        return batches


def _collate(idx: np.ndarray, src: list[list[int]], tgt: list[list[int]], pad: int):
    import torch
    s = [src[i] for i in idx]
    t = [tgt[i] for i in idx]
    ls, lt = max(map(len, s)), max(map(len, t))
    input_ids = torch.full((len(idx), ls), pad, dtype=torch.long)  # (batch, src_len)
    labels = torch.full((len(idx), lt), -100, dtype=torch.long)  # (batch, tgt_len)
    dec_in = torch.full((len(idx), lt), pad, dtype=torch.long)  # shifted right, starts with pad
    for k, (a, b) in enumerate(zip(s, t)):
        input_ids[k, : len(a)] = torch.tensor(a)
        labels[k, : len(b)] = torch.tensor(b)
        dec_in[k, 1 : len(b)] = torch.tensor(b[:-1])
    return input_ids, (input_ids != pad).long(), dec_in, labels


def _build_model(cfg: TrainNmtConfig, vocab_size: int):
    from transformers import MarianConfig, MarianMTModel

    pad = vocab_size - 1
    mcfg = MarianConfig(
        vocab_size=vocab_size, decoder_vocab_size=vocab_size, d_model=cfg.d_model,
        encoder_layers=cfg.encoder_layers, decoder_layers=cfg.decoder_layers,
        encoder_attention_heads=cfg.heads, decoder_attention_heads=cfg.heads,
        encoder_ffn_dim=cfg.ffn_dim, decoder_ffn_dim=cfg.ffn_dim, dropout=cfg.dropout,
        attention_dropout=0.0, activation_function="swish", max_position_embeddings=512,
        pad_token_id=pad, eos_token_id=EOS_ID, decoder_start_token_id=pad,
        forced_eos_token_id=EOS_ID, scale_embedding=True,
        share_encoder_decoder_embeddings=True, tie_word_embeddings=True,
    )
    return MarianMTModel(mcfg)


def _tokenizer_files(sp_model: Path, hf_dir: Path, vocab_size: int) -> None:
    """Write the MarianTokenizer files (source.spm, target.spm, vocab.json) next to the model."""
    import shutil

    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    vocab["<pad>"] = vocab_size - 1
    (hf_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    shutil.copy(sp_model, hf_dir / "source.spm")
    shutil.copy(sp_model, hf_dir / "target.spm")
    (hf_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "MarianTokenizer", "source_lang": "eng_Latn", "target_lang": "mul",
        "model_max_length": 512, "separate_vocabs": False,
    }))


def fingerprint_parts(cfg: TrainNmtConfig, langs: LangsConfig, device: str) -> dict:
    """Everything the trained model depends on (the resume guard's fingerprint).

    Config (fields in ``_RESUME_NEUTRAL`` left out), languages, the train and dev tables'
    hashes, the resolved device, this module's code and the package versions.
    """
    return training_parts(cfg, langs, device, (__name__,), _RESUME_NEUTRAL,
                          train=file_hash(cfg.train), dev=file_hash(cfg.dev))


def train(cfg: TrainNmtConfig, langs: LangsConfig) -> dict:
    """Train (or resume) the Marian model; save the HF model to ``<work_dir>/hf_model``.

    Returns:
        Training metrics (steps, epochs, what stopped training, final train and dev loss;
        the wall minutes under ``runtime``).

    Raises:
        ValueError: ``max_minutes`` stopped training before ``max_steps`` and
            ``allow_partial`` is false (the checkpoint is saved first).
    """
    import torch
    targets = langmod.validate(langs.pool)
    work = Path(cfg.work_dir)
    hf_dir = work / "hf_model"
    state_path = work / "checkpoint.pt"
    torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)

    cols = [langs.source, *targets]
    train_df = read_table(cfg.train, columns=cols)
    dev_df = read_table(cfg.dev, columns=cols)
    claim_work_dir(work, "checkpoint and sentencepiece model",
                   **fingerprint_parts(cfg, langs, device))
    sp_path = work / "spm.model"
    tags = [TARGET_TAG.format(code=t) for t in targets]
    if not sp_path.is_file():
        texts = pd.concat([train_df[c] for c in cols]).tolist()
        random.Random(cfg.seed).shuffle(texts)
        logger.info("training sentencepiece (%d pieces) on %d texts", cfg.vocab_size, len(texts))
        train_sentencepiece(texts, tags, cfg.vocab_size, sp_path)
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(sp_path))
    vocab_size = sp.get_piece_size() + 1  # + <pad>, last
    pad = vocab_size - 1

    def encode(df: pd.DataFrame) -> tuple[list[list[int]], list[list[int]]]:
        pairs = _pairs(df, langs.source, targets)
        src_ids = sp.encode(pairs.src.tolist())
        tgt_ids = sp.encode(pairs.tgt.tolist())
        m = cfg.max_tokens - 1
        src = [[sp.piece_to_id(TARGET_TAG.format(code=lang))] + s[: m - 1] + [EOS_ID]
               for lang, s in zip(pairs.lang, src_ids)]
        tgt = [t[:m] + [EOS_ID] for t in tgt_ids]
        return src, tgt

    src, tgt = encode(train_df)
    dev_src, dev_tgt = encode(dev_df.iloc[:200])
    logger.info("%d training pairs, %d dev pairs, vocab %d", len(src), len(dev_src), vocab_size)

    model = _build_model(cfg, vocab_size).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=0.0)

    def lr_at(step: int) -> float:
        return cfg.lr * min((step + 1) / cfg.warmup_steps, math.sqrt(cfg.warmup_steps / (step + 1)))

    step, epoch, batch_pos, elapsed = 0, 0, 0, 0.0
    history: list[dict] = []
    if state_path.is_file():
        state = torch.load(state_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optim"])
        step, epoch, batch_pos = state["step"], state["epoch"], state["batch_pos"]
        elapsed, history = state["elapsed"], state["history"]
        torch.set_rng_state(state["torch_rng"])
        logger.info("resumed at step %d (epoch %d, %.1f min)", step, epoch, elapsed / 60)

    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=-100, label_smoothing=0.1)
    batches = _Batches(src, tgt, cfg.batch_tokens, cfg.seed)

    def dev_loss() -> float:
        model.eval()
        tot, n = 0.0, 0
        with torch.no_grad():
            for b in _Batches(dev_src, dev_tgt, cfg.batch_tokens, 0).epoch(0):
                ii, am, di, lab = (x.to(device) for x in _collate(b, dev_src, dev_tgt, pad))
                logits = model(input_ids=ii, attention_mask=am, decoder_input_ids=di).logits
                tot += torch.nn.functional.cross_entropy(
                    logits.flatten(0, 1), lab.flatten(), ignore_index=-100, reduction="sum"
                ).item()
                n += int((lab != -100).sum())
        model.train()
        return tot / max(n, 1)

    def save() -> None:
        with atomic_path(state_path) as tmp:
            torch.save({
                "model": model.state_dict(), "optim": opt.state_dict(), "step": step,
                "epoch": epoch, "batch_pos": batch_pos, "elapsed": elapsed,
                "history": history, "torch_rng": torch.get_rng_state(),
            }, tmp)

    def out_of_time() -> bool:
        return cfg.max_minutes > 0 and time.monotonic() - run_start >= cfg.max_minutes * 60

    model.train()
    run_start = time.monotonic()
    t0 = run_start - elapsed
    bar = tqdm(total=cfg.max_steps, initial=step, desc="train_nmt", unit="step")
    run_loss, run_tok, run_t = 0.0, 0, time.monotonic()
    # A resumed run whose max_steps are already done only re-exports.
    stop = step >= cfg.max_steps
    while not stop:
        order = batches.epoch(epoch)
        while batch_pos < len(order):
            ii, am, di, lab = (x.to(device) for x in _collate(order[batch_pos], src, tgt, pad))
            batch_pos += 1
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            logits = model(input_ids=ii, attention_mask=am, decoder_input_ids=di).logits
            loss = loss_fn(logits.flatten(0, 1), lab.flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            ntok = int((lab != -100).sum())
            run_loss += loss.item() * ntok
            run_tok += ntok
            bar.update(1)
            elapsed = time.monotonic() - t0
            if step % 20 == 0:
                bar.set_postfix(loss=f"{run_loss / run_tok:.3f}",
                                tok_s=f"{run_tok / (time.monotonic() - run_t):.0f}", ep=epoch)
            stop = step >= cfg.max_steps or out_of_time()
            if step % cfg.eval_every == 0 or stop:
                record = {"step": step, "epoch": epoch, "minutes": round(elapsed / 60, 2),
                          "train_loss": round(run_loss / max(run_tok, 1), 4),
                          "dev_loss": round(dev_loss(), 4)}
                history.append(record)
                logger.info("step %d: %s", step, record)
                write_log(work / "log", [{k: r[k] for k in LOGGED} for r in history])
                run_loss, run_tok, run_t = 0.0, 0, time.monotonic()
                save()
            if stop:
                break
        if not stop:
            epoch, batch_pos = epoch + 1, 0
    bar.close()
    if step < cfg.max_steps and not cfg.allow_partial:
        raise ValueError(
            f"train_nmt: max_minutes ({cfg.max_minutes}) stopped training at step {step} of "
            f"{cfg.max_steps} (checkpoint saved in {work}); rerun to continue from it, raise "
            "max_minutes, or set allow_partial: true"
        )
    hf_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(hf_dir)
    _tokenizer_files(sp_path, hf_dir, vocab_size)
    last = history[-1] if history else {}
    return {"steps": step, "epochs": epoch, "runtime": {"minutes": round(elapsed / 60, 1)},
            "stopped_by": "max_steps" if step >= cfg.max_steps else "max_minutes",
            "train_loss": last.get("train_loss"), "dev_loss": last.get("dev_loss")}


def export(cfg: TrainNmtConfig, langs: LangsConfig) -> Path:
    """Convert ``<work_dir>/hf_model`` to a CTranslate2 directory at ``output_dir``."""
    from pipeline.translate.convert_nmt import convert_hf_model

    return convert_hf_model(
        Path(cfg.work_dir) / "hf_model", cfg.output_dir, family="marian",
        quantization=cfg.quantization,
        extra_meta={"source_lang": langs.source, "target_langs": list(langs.pool),
                    "target_tag": TARGET_TAG},
    )


def score_dev(cfg: TrainNmtConfig, langs: LangsConfig) -> dict[str, float]:
    """Score the exported model (chrF, BLEU per language) on the first dev verses."""
    from pipeline.translate.engine import load_translator
    from pipeline.translate.translate import corpus_scores

    dev = read_table(cfg.dev, columns=[langs.source, *langs.pool]).iloc[: cfg.dev_sentences]
    translator = load_translator(
        cfg.output_dir, device=cfg.device, intra_threads=cfg.threads, beam_size=cfg.beam_size
    )
    metrics: dict[str, float] = {}
    for lang in tqdm(langs.pool, desc="dev chrF", unit="lang"):
        keep = dev[lang].str.len() > 0
        hyps = translator.translate(dev.loc[keep, langs.source].tolist(), lang)
        scores = corpus_scores(hyps, dev.loc[keep, lang].tolist(), lang)
        metrics[f"chrf_{lang}"] = scores["chrf"]
        metrics[f"bleu_{lang}"] = scores["bleu"]
        logger.info("dev %s: chrF %.1f BLEU %.1f", lang, scores["chrf"], scores["bleu"])
    metrics["chrf_mean"] = round(float(np.mean([metrics[f"chrf_{x}"] for x in langs.pool])), 2)
    metrics["dev_sentences"] = int(len(dev))
    return metrics


def run(cfg: TrainNmtConfig, langs: LangsConfig) -> dict:
    """Stage ``train_nmt``: train (resumable), export to CTranslate2, score the dev split."""
    metrics = train(cfg, langs)
    runtime = metrics.pop("runtime")
    out = export(cfg, langs)
    metrics.update(score_dev(cfg, langs))
    write_meta(out / "meta.json", to_dict(cfg), langs=to_dict(langs), training=metrics)
    return {**metrics, "runtime": runtime}
