"""The encoder split in two: a frozen bottom computed once per text, a trainable top block.

The fine-tuned part of the encoder is its top ``k`` transformer layers
(``TrainDrmimConfig.trainable_layers``). Everything below (embeddings and the lower layers)
is frozen, so its output for a token sequence never changes: :class:`FeatureStore` computes
it once per distinct sequence and every method, seed and epoch reuses it. That is what makes
the whole comparison (6 variants × 3 seeds × 2 encoders) affordable on a 2-core CPU; with
``k`` equal to the number of layers the "bottom" is the embedding layer alone and the split
is ordinary full fine-tuning with frozen word embeddings. With a trunk memo
(``trunk_layers``, :mod:`pipeline.encoders.trunk`) the store reads the lowest layers' states
from the memo ``evaluate`` and ``train_encoder`` fill: an aligned encoder shares them with its
base, so its features run only the frozen layers above them.

:class:`TopBlock` runs the trainable layers on those features. It can add a perturbation to
its input (EPAR pushes exactly these vectors: the input embeddings of the trainable part)
and returns the attention probabilities of its layers (EPAR's attention pull), which the
model must compute eagerly (``attn_implementation="eager"``).

The encoder directory is a sentence-transformers model whose Transformer module is a Hugging
Face BERT-family encoder (BERT, XLM-R, multilingual-E5): ``.embeddings`` and
``.encoder.layer[i]`` with a ``*SelfAttention`` submodule returning ``(output, weights)``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from pipeline.encoders.trunk import frozen_trunk

logger = logging.getLogger(__name__)

#: A tokenised sequence: input ids and token type ids (empty when the tokenizer gives none,
#: as XLM-R's does). Hashable, so it keys the feature cache.
Seq = tuple[tuple[int, ...], tuple[int, ...]]


@dataclasses.dataclass
class Encoder:
    """A loaded encoder: tokenizer, HF model and how to feed and pool it.

    Attributes:
        model: The Hugging Face encoder (eval mode, eager attention).
        tokenizer: Its tokenizer.
        prefix: Text prefix put in front of every segment (the E5 prompt).
        pooling: ``mean`` or ``cls``.
        path: The directory it was loaded from.
    """

    model: Any
    tokenizer: Any
    prefix: str
    pooling: str
    path: Path

    @property
    def num_layers(self) -> int:
        """Number of transformer layers."""
        return len(self.model.encoder.layer)

    @property
    def hidden_size(self) -> int:
        """Width of the token states."""
        return int(self.model.config.hidden_size)


def _st_module_path(root: Path, suffix: str) -> Path | None:
    """Directory of the first sentence-transformers module whose type ends with ``suffix``."""
    modules = root / "modules.json"
    if not modules.is_file():
        return None
    for module in json.loads(modules.read_text(encoding="utf-8")):
        if str(module.get("type", "")).endswith(suffix):
            return root / module.get("path", "")
    return None


def load_encoder(path: str | Path, prefix: str = "auto", pooling: str = "auto",
                 device: str = "cpu") -> Encoder:
    """Load the HF model and tokenizer of a sentence-transformers (or plain HF) directory.

    Args:
        path: A sentence-transformers directory (the Transformer module's files are found
            through ``modules.json``; sentence-transformers 6 keeps them at the root) or a
            plain Hugging Face model directory.
        prefix: ``auto`` uses the default prompt of ``config_sentence_transformers.json``
            (none when it names none); anything else is used as is.
        pooling: ``auto`` reads the Pooling module's config (mean when there is none).
        device: torch device of the model.

    Returns:
        The :class:`Encoder`.

    Raises:
        FileNotFoundError: The directory or its model config does not exist.
    """
    from transformers import AutoModel, AutoTokenizer

    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(
            f"encoder directory not found: {root}; build it first (dvc repro import_encoder "
            f"or train_encoder) or pass the path of a saved sentence-transformers model"
        )
    hf_dir = _st_module_path(root, "Transformer") or root
    if not (hf_dir / "config.json").is_file():
        raise FileNotFoundError(f"{hf_dir} has no config.json: not a Hugging Face model directory")
    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
    # Eager attention returns the attention probabilities EPAR pulls together.
    model = AutoModel.from_pretrained(str(hf_dir), attn_implementation="eager").to(device).eval()
    if prefix == "auto":
        st_cfg = root / "config_sentence_transformers.json"
        prefix = ""
        if st_cfg.is_file():
            data = json.loads(st_cfg.read_text(encoding="utf-8"))
            prefix = (data.get("prompts") or {}).get(data.get("default_prompt_name") or "", "")
    if pooling == "auto":
        pooling = "mean"
        pool_dir = _st_module_path(root, "Pooling")
        if pool_dir is not None and (pool_dir / "config.json").is_file():
            pool_cfg = json.loads((pool_dir / "config.json").read_text(encoding="utf-8"))
            mode = pool_cfg.get("pooling_mode") or (
                "cls" if pool_cfg.get("pooling_mode_cls_token") else "mean"
            )
            if mode not in ("mean", "cls"):
                raise ValueError(f"{pool_dir}: pooling mode '{mode}' is not supported "
                                 "(use mean or cls, or set downstream.pooling)")
            pooling = mode
    logger.info("encoder %s: %d layers, width %d, prefix %r, %s pooling", root,
                len(model.encoder.layer), model.config.hidden_size, prefix, pooling)
    return Encoder(model=model, tokenizer=tokenizer, prefix=prefix, pooling=pooling, path=root)


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``(b, 1, 1, s)`` additive attention mask (0 for tokens, a large negative for padding)."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def _layer_output(out: Any) -> torch.Tensor:
    # transformers 5 layers return a tensor; older versions a tuple whose first item it is.
    return out[0] if isinstance(out, tuple) else out


def pad_batch(seqs: list[Seq], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad sequences into ``(b, s)`` input ids, token type ids and a 0/1 mask."""
    width = max(len(ids) for ids, _ in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    types = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (seq_ids, seq_types) in enumerate(seqs):
        ids[i, : len(seq_ids)] = torch.tensor(seq_ids, dtype=torch.long)
        if seq_types:
            types[i, : len(seq_types)] = torch.tensor(seq_types, dtype=torch.long)
        mask[i, : len(seq_ids)] = 1
    return ids, types, mask


def stack_features(feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad ``(len_i, d)`` feature tensors into ``(b, s, d)`` and a ``(b, s)`` mask."""
    width = max(f.shape[0] for f in feats)
    out = feats[0].new_zeros((len(feats), width, feats[0].shape[1]))
    mask = torch.zeros((len(feats), width), dtype=torch.long, device=feats[0].device)
    for i, f in enumerate(feats):
        out[i, : f.shape[0]] = f
        mask[i, : f.shape[0]] = 1
    return out, mask


class FeatureStore:
    """Frozen-bottom features of token sequences, computed once per distinct sequence.

    Args:
        encoder: The loaded encoder.
        trainable_layers: Top layers left to :class:`TopBlock`; the store runs the
            embeddings and the ``num_layers - trainable_layers`` layers below them.
        batch_size: Sequences per forward pass.
        cache: Keep computed features (``False``: :meth:`get` recomputes every time).
        trunk_layers: Lowest layers read from the trunk memo under ``trunk_dir``
            (:func:`pipeline.encoders.trunk.frozen_trunk`); 0: none. While the store is open
            the encoder's backbone is patched; :meth:`close` (or leaving a ``with`` block)
            writes the memo's new states and restores it.
        trunk_dir: Root of the trunk memo.
    """

    def __init__(self, encoder: Encoder, trainable_layers: int, batch_size: int = 64,
                 cache: bool = True, trunk_layers: int = 0, trunk_dir: str | Path = "") -> None:
        if not 1 <= trainable_layers <= encoder.num_layers:
            raise ValueError(
                f"trainable_layers must be between 1 and the encoder's {encoder.num_layers} "
                f"layers, got {trainable_layers}"
            )
        self.encoder = encoder
        self.frozen_layers = encoder.num_layers - trainable_layers
        if not 0 <= trunk_layers <= self.frozen_layers:
            raise ValueError(f"trunk_layers must be between 0 and the {self.frozen_layers} "
                             f"frozen layers (the encoder's {encoder.num_layers} minus "
                             f"trainable_layers), got {trunk_layers}")
        self.batch_size = batch_size
        self.cache = cache
        self._features: dict[Seq, torch.Tensor] = {}
        self.device = next(encoder.model.parameters()).device
        self._trunk = contextlib.ExitStack()
        self.memo = (self._trunk.enter_context(frozen_trunk(
            encoder.model, trunk_layers, trunk_dir, top=self.frozen_layers))
            if trunk_layers else None)

    def close(self) -> None:
        """Write the trunk memo's new states and give the encoder its own forward back."""
        self._trunk.close()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @torch.no_grad()
    def compute(self, seqs: list[Seq]) -> list[torch.Tensor]:
        """Bottom features ``(len_i, d)`` of each sequence (no caching)."""
        model = self.encoder.model
        pad_id = self.encoder.tokenizer.pad_token_id or 0
        out: list[torch.Tensor] = []
        for start in range(0, len(seqs), self.batch_size):
            chunk = seqs[start:start + self.batch_size]
            ids, types, mask = (t.to(self.device) for t in pad_batch(chunk, pad_id))
            if self.memo is not None:  # the patched backbone stops after the frozen layers
                h = model(input_ids=ids, token_type_ids=types,
                          attention_mask=mask).last_hidden_state
            else:
                h = model.embeddings(input_ids=ids, token_type_ids=types)
                ext = additive_mask(mask, h.dtype)
                for layer in model.encoder.layer[: self.frozen_layers]:
                    h = _layer_output(layer(h, ext))
            out.extend(h[i, : len(s[0])].clone() for i, s in enumerate(chunk))
        return out

    def add(self, seqs: list[Seq], desc: str = "frozen features") -> int:
        """Compute and keep the features of the sequences not stored yet.

        Sequences are processed longest first, so batches hold similar lengths (little
        padding). Returns the number of sequences computed.
        """
        if not self.cache:
            return 0
        todo = list(dict.fromkeys(s for s in seqs if s not in self._features))
        todo.sort(key=lambda s: len(s[0]), reverse=True)
        bar = tqdm(total=len(todo), desc=desc, unit="seq", disable=not todo)
        for start in range(0, len(todo), self.batch_size * 8):
            chunk = todo[start:start + self.batch_size * 8]
            for key, feat in zip(chunk, self.compute(chunk)):
                self._features[key] = feat
            bar.update(len(chunk))
        bar.close()
        return len(todo)

    def get(self, seqs: list[Seq]) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded ``(b, s, d)`` features and ``(b, s)`` mask of a batch of sequences."""
        if self.cache:
            missing = [s for s in seqs if s not in self._features]
            if missing:
                self.add(missing)
            feats = [self._features[s] for s in seqs]
        else:
            feats = self.compute(seqs)
        return stack_features(feats)


class TopBlock(nn.Module):
    """The trainable top layers of an encoder (a copy; the encoder itself is not changed).

    Args:
        encoder: The loaded encoder.
        trainable_layers: How many top layers to copy.
    """

    def __init__(self, encoder: Encoder, trainable_layers: int) -> None:
        super().__init__()
        layers = encoder.model.encoder.layer[encoder.num_layers - trainable_layers:]
        self.layers = nn.ModuleList(copy.deepcopy(layer) for layer in layers)
        self.pooling = encoder.pooling
        self.hidden_size = encoder.hidden_size
        self._attentions: list[torch.Tensor] = []
        self._record = False
        for layer in self.layers:
            attn = next((m for m in layer.modules()
                         if type(m).__name__.endswith("SelfAttention")), None)
            if attn is None:
                raise ValueError(f"{type(layer).__name__} has no *SelfAttention module: only "
                                 "BERT-family encoders (BERT, XLM-R, E5) are supported")
            attn.register_forward_hook(self._keep_attention)
        self.requires_grad_(True)

    def _keep_attention(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._record:
            self._attentions.append(output[1])  # (b, heads, s, s) probabilities (eager)

    def forward(self, h: torch.Tensor, mask: torch.Tensor, delta: torch.Tensor | None = None,
                attentions: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run the layers on bottom features.

        Args:
            h: ``(b, s, d)`` bottom features.
            mask: ``(b, s)`` 1 for real tokens.
            delta: Optional ``(b, s, d)`` perturbation added to ``h``.
            attentions: Also return each layer's ``(b, heads, s, s)`` attention probabilities.

        Returns:
            ``(b, s, d)`` token states and the attention list (empty unless asked for).
        """
        x = h if delta is None else h + delta
        ext = additive_mask(mask, x.dtype)
        self._attentions, self._record = [], attentions
        try:
            for layer in self.layers:
                x = _layer_output(layer(x, ext))
        finally:
            self._record = False
        maps, self._attentions = self._attentions, []
        return x, maps

    def pool(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``(b, d)`` sentence vectors: masked mean of the token states, or the first token."""
        if self.pooling == "cls":
            return states[:, 0]
        m = mask[..., None].to(states.dtype)
        return (states * m).sum(1) / m.sum(1).clamp(min=1.0)
