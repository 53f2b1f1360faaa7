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
and returns the attention probabilities of its layers (EPAR's attention pull).

On a GPU both run in bf16 autocast where the GPU has it (:func:`pipeline.devices.autocast_dtype`;
the heads and losses stay fp32) with PyTorch's fused attention (SDPA), which never forms the
attention probabilities: only the passes that return them (EPAR's clean and pushed passes,
with its pull switched on) compute attention eagerly. On the CPU every pass is eager and
fp32, as the committed results were made (SDPA's CPU kernel rounds differently, about 1e-6).

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

from pipeline.devices import autocast, autocast_dtype, precision_name, to_device
from pipeline.encoders.trunk import frozen_trunk

logger = logging.getLogger(__name__)

#: A tokenised sequence: input ids and token type ids (empty when the tokenizer gives none,
#: as XLM-R's does). Hashable, so it keys the feature cache.
Seq = tuple[tuple[int, ...], tuple[int, ...]]


@dataclasses.dataclass
class Encoder:
    """A loaded encoder: tokenizer, HF model and how to feed and pool it.

    Attributes:
        model: The Hugging Face encoder (eval mode; attention from
            :func:`attention_implementation`).
        tokenizer: Its tokenizer.
        prefix: Text prefix put in front of every segment (the E5 prompt).
        pooling: ``mean`` or ``cls``.
        path: The directory it was loaded from.
        dtype: Autocast dtype of its transformer layers (``None``: fp32).
    """

    model: Any
    tokenizer: Any
    prefix: str
    pooling: str
    path: Path
    dtype: torch.dtype | None = None

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


def attention_implementation(device: str | torch.device) -> str:
    """The attention kernel the encoder is loaded with on ``device``: ``sdpa`` or ``eager``.

    SDPA on a GPU (fused, no ``(s, s)`` probability matrix in memory); eager on the CPU, where
    SDPA's kernel would change the results in the last bits and the committed ones were made
    eagerly. :class:`TopBlock` still computes eagerly the passes that return attention
    probabilities, whatever this says.
    """
    return "sdpa" if torch.device(device).type == "cuda" else "eager"


def layer_mask(mask: torch.Tensor, dtype: torch.dtype, implementation: str) -> torch.Tensor:
    """The ``(b, 1, 1, s)`` attention mask a layer takes, from a ``(b, s)`` 0/1 mask.

    Additive (:func:`additive_mask`) for eager attention, as it always was; boolean (True:
    attend) for SDPA, which a bf16 autocast would otherwise cast to bf16 along with the scores.
    """
    if implementation == "eager":
        return additive_mask(mask, dtype)
    return mask[:, None, None, :].bool()


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
        device: torch device of the model; it also sets the attention kernel
            (:func:`attention_implementation`) and the autocast dtype
            (:func:`pipeline.devices.autocast_dtype`).

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
    attention = attention_implementation(device)
    model = AutoModel.from_pretrained(str(hf_dir), attn_implementation=attention)
    model = model.to(device).eval()
    dtype = autocast_dtype(device)
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
    logger.info("encoder %s: %d layers, width %d, prefix %r, %s pooling, %s attention, %s", root,
                len(model.encoder.layer), model.config.hidden_size, prefix, pooling, attention,
                precision_name(dtype))
    return Encoder(model=model, tokenizer=tokenizer, prefix=prefix, pooling=pooling, path=root,
                   dtype=dtype)


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
    """Right-pad ``(len_i, d)`` feature tensors into ``(b, s, d)`` and a ``(b, s)`` mask.

    The mask is built on the host from the lengths and sent in one copy, not filled row by
    row on the features' device (one small GPU kernel per row).
    """
    out = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)
    lengths = torch.tensor([f.shape[0] for f in feats])
    mask = (torch.arange(out.shape[1])[None, :] < lengths[:, None]).long()
    return out, to_device(mask, out.device)


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
            encoder.model, trunk_layers, trunk_dir, top=self.frozen_layers, dtype=encoder.dtype))
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
            ids, types, mask = (to_device(t, self.device) for t in pad_batch(chunk, pad_id))
            with autocast(self.device.type, self.encoder.dtype):
                if self.memo is not None:  # the patched backbone stops after the frozen layers
                    h = model(input_ids=ids, token_type_ids=types,
                              attention_mask=mask).last_hidden_state
                else:
                    h = model.embeddings(input_ids=ids, token_type_ids=types)
                    ext = layer_mask(mask, h.dtype, model.config._attn_implementation)
                    for layer in model.encoder.layer[: self.frozen_layers]:
                        h = _layer_output(layer(h, ext))
            # Autocast layers end in an fp32 LayerNorm: the features are fp32 either way.
            out.extend(h[i, : len(s[0])].float().clone() for i, s in enumerate(chunk))
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

    The layers run in the encoder's autocast dtype and with its attention kernel, except the
    passes asked for attention probabilities, which run eagerly (:meth:`forward`).

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
        self.dtype = encoder.dtype
        self.attention = str(encoder.model.config._attn_implementation)
        self._attentions: list[torch.Tensor] = []
        self._record = False
        configs: dict[int, Any] = {}
        for layer in self.layers:
            attn = next((m for m in layer.modules()
                         if type(m).__name__.endswith("SelfAttention")), None)
            if attn is None:
                raise ValueError(f"{type(layer).__name__} has no *SelfAttention module: only "
                                 "BERT-family encoders (BERT, XLM-R, E5) are supported")
            attn.register_forward_hook(self._keep_attention)
            configs[id(attn.config)] = attn.config
        # The copies' configs (each deep copy has its own): a self-attention module picks its
        # kernel from its config on every call, so switching them switches the block's kernel.
        self._configs = list(configs.values())
        self.requires_grad_(True)

    def _use(self, implementation: str) -> None:
        for config in self._configs:
            if config._attn_implementation != implementation:
                config._attn_implementation = implementation

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
            attentions: Also return each layer's ``(b, heads, s, s)`` attention probabilities
                (fp32): this pass computes attention eagerly, the only kernel that forms them.

        Returns:
            ``(b, s, d)`` fp32 token states and the attention list (empty unless asked for).
        """
        x = h if delta is None else h + delta
        implementation = "eager" if attentions else self.attention
        ext = layer_mask(mask, x.dtype, implementation)
        self._attentions, self._record = [], attentions
        self._use(implementation)
        try:
            with autocast(x.device.type, self.dtype):
                for layer in self.layers:
                    x = _layer_output(layer(x, ext))
        finally:
            self._record = False
            self._use(self.attention)
        maps, self._attentions = self._attentions, []
        # A BERT layer ends in LayerNorm, which autocast runs in fp32; .float() keeps the heads
        # (fp32, outside autocast) safe from any other ending, and is free on fp32 states.
        return x.float(), maps

    def pool(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``(b, d)`` sentence vectors: masked mean of the token states, or the first token."""
        if self.pooling == "cls":
            return states[:, 0]
        m = mask[..., None].to(states.dtype)
        return (states * m).sum(1) / m.sum(1).clamp(min=1.0)
