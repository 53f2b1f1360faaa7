"""A disk memo of an encoder's frozen trunk: the hidden states after its lower layers, per text.

When only the top ``k`` layers of an encoder are trained (``train_encoder.trainable_layers``),
the embeddings and the layers below compute the same states for a text in every run, every
seed and every aligned model of that base. :func:`frozen_trunk` patches a loaded
SentenceTransformer so that its backbone reads those states from a memo and runs only the top
layers; a text not in the memo goes through the lower layers once (in eval mode, without
dropout) and is stored. ``train_encoder``, ``evaluate`` and ``train_drmim`` (its frozen features,
:class:`pipeline.downstream.encoder.FeatureStore`) share one memo directory, so the base model,
every regime, every seed and every downstream run pay the lower layers of a text once.

The memo is keyed by content, never by name: its directory is a SHA-256 of the frozen
parameters (embeddings and the lower layers), the split point, the torch/transformers
versions and, for states computed under autocast (bf16 on a GPU, ``dtype``), that dtype, and an
entry is the SHA-256 of a text's token ids. A model whose lower layers differ
(fully fine-tuned, another base) gets its own directory, so a memo can never serve states of
other weights. A text's states do not depend on what else is in its batch (padding is masked;
tests/test_trunk.py checks the patched model against the plain one), so results are the same
with a cold or a warm memo. A text with token type ids other than zero (the second segment of
a BERT sentence pair) is computed every time and never stored: the memo keys on token ids only.

Layout: ``<root>/<digest>/<shard>/{keys,offsets,states}.npy``, one shard per flush (written to
a temporary folder and renamed, so a killed run leaves only whole shards); ``states`` is
float32 ``(tokens, hidden)``, read one text at a time with ``pread`` (not memory-mapped, whose
resident pages would count in the process's RSS). BERT-style backbones only (``embeddings`` +
``encoder.layer``: BERT, XLM-R, E5).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.devices import autocast

logger = logging.getLogger(__name__)

#: Pending states are written as a shard once they reach this many bytes (and at exit). The
#: first multi-way training run fills the memo; with 64 MB instead of 256 its peak RSS was 3.2
#: instead of 3.7 GB, in the same time (docs/benchmarks.md, "Stage costs").
FLUSH_BYTES = 64 << 20


def backbone_layers(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.ModuleList]:
    """The BERT-style backbone of ``model`` and its ``encoder.layer`` list.

    Raises:
        ValueError: ``model`` has no single ``*encoder.layer`` list with ``embeddings`` beside.
    """
    found = [(name, module) for name, module in model.named_modules()
             if name.endswith("encoder.layer") and isinstance(module, torch.nn.ModuleList)]
    if len(found) != 1:
        raise ValueError(
            f"no single '*encoder.layer' list in {type(model).__name__} (a BERT-style "
            "backbone: BERT, XLM-R, E5); train every layer (trainable_layers: 0) and turn the "
            "trunk memo off (evaluate.trunk_layers: 0) for this encoder")
    name, layers = found[0]
    backbone = model.get_submodule(name.removesuffix("encoder.layer").rstrip("."))
    return backbone, layers


def trunk_digest(backbone: torch.nn.Module, layers: torch.nn.ModuleList, split: int,
                 dtype: torch.dtype | None = None) -> str:
    """SHA-256 of what the trunk's states depend on: frozen weights, split point, versions.

    ``dtype``, the autocast dtype the states are computed in, enters the digest only when
    given: bf16 states never serve an fp32 run (nor the reverse), and fp32 memos keep the
    digest they always had.
    """
    h = hashlib.sha256(f"split={split}".encode())
    for package in ("torch", "transformers"):
        h.update(f"{package}={importlib.metadata.version(package)}".encode())
    if dtype is not None:
        h.update(f"autocast={dtype}".encode())
    frozen = [("embeddings", backbone.embeddings)] + [
        (f"layer.{i}", layer) for i, layer in enumerate(layers[:split])]
    for prefix, module in frozen:
        for name, tensor in module.state_dict().items():
            h.update(f"{prefix}.{name}".encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class TrunkMemo:
    """The stored trunk states of one backbone at one split point (see the module docstring)."""

    def __init__(self, directory: Path, hidden: int) -> None:
        self.directory = directory
        self.hidden = hidden
        self.files: list[int] = []  # open descriptors of the shards' states.npy
        self.index: dict[bytes, tuple[int, int, int]] = {}  # key → (fd, byte offset, tokens)
        self.pending: dict[bytes, np.ndarray] = {}
        self.pending_bytes = 0
        self.hits = self.misses = 0
        for shard in sorted(p for p in directory.glob("*") if (p / "states.npy").is_file()):
            self._add_shard(shard)

    def _add_shard(self, shard: Path) -> None:
        keys = np.load(shard / "keys.npy")
        offsets = np.load(shard / "offsets.npy")
        with open(shard / "states.npy", "rb") as fh:
            np.lib.format.read_magic(fh)
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
            start = fh.tell()
        if dtype != np.float32 or shape[1:] != (self.hidden,):
            raise ValueError(f"{shard}: states are {dtype} {shape}, expected float32 "
                             f"(tokens, {self.hidden}); delete the folder")
        fd = os.open(shard / "states.npy", os.O_RDONLY)
        self.files.append(fd)
        row = 4 * self.hidden
        for i, key in enumerate(keys):  # (n, 32) uint8: one SHA-256 per row
            self.index[key.tobytes()] = (fd, start + int(offsets[i]) * row,
                                         int(offsets[i + 1] - offsets[i]))

    def close(self) -> None:
        """Write what is pending and close the shards."""
        self.flush()
        for fd in self.files:
            os.close(fd)
        self.files.clear()
        self.index.clear()

    def get(self, key: bytes) -> np.ndarray | None:
        """The ``(tokens, hidden)`` states stored under ``key``, or ``None``."""
        if key in self.pending:
            return self.pending[key]
        if key in self.index:
            fd, offset, tokens = self.index[key]
            data = os.pread(fd, tokens * 4 * self.hidden, offset)
            return np.frombuffer(data, dtype=np.float32).reshape(tokens, self.hidden)
        return None

    def put(self, key: bytes, states: np.ndarray) -> None:
        """Store ``states`` under ``key`` (written with the next flush)."""
        self.pending[key] = states
        self.pending_bytes += states.nbytes
        if self.pending_bytes >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Write the pending states as one shard (atomically: a temporary folder renamed)."""
        if not self.pending:
            return
        keys = list(self.pending)
        arrays = [self.pending[k] for k in keys]
        offsets = np.cumsum([0] + [len(a) for a in arrays])
        name = uuid.uuid4().hex
        tmp = self.directory / f".{name}.tmp"
        tmp.mkdir(parents=True)
        np.save(tmp / "keys.npy", np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(-1, 32))
        np.save(tmp / "offsets.npy", offsets)
        np.save(tmp / "states.npy", np.concatenate(arrays).astype(np.float32))
        try:
            tmp.rename(self.directory / name)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.pending.clear()
        self.pending_bytes = 0
        self._add_shard(self.directory / name)


def _token_key(ids: np.ndarray) -> bytes:
    return hashlib.sha256(ids.astype(np.int64).tobytes()).digest()


@contextlib.contextmanager
def frozen_trunk(model: torch.nn.Module, split: int, root: str | Path,
                 top: int | None = None, dtype: torch.dtype | None = None) -> Iterator[TrunkMemo]:
    """Within the block, ``model``'s backbone reads layers ``< split`` from a memo under ``root``.

    The embeddings and layers below ``split`` must stay frozen inside the block (the memo is
    keyed by their weights at entry). Gradients flow through the top layers only.

    Args:
        model: A SentenceTransformer (or any module) over a BERT-style backbone.
        split: Lower layers memoized (1 to the number of layers - 1; the embeddings always).
        root: The memo root (``data/work/trunk``); one subdirectory per trunk digest.
        top: The backbone runs layers ``split`` to ``top - 1`` above the memo and returns
            their output (``None``: every layer above ``split``).
        dtype: Autocast dtype the missing states are computed in
            (:func:`pipeline.devices.autocast_dtype`); part of the memo's key. ``None``: the
            states are computed as the caller runs the model (fp32 unless it autocasts) and
            keyed as fp32.

    Yields:
        The memo (its ``hits``/``misses`` count texts served from it / computed and stored).

    Raises:
        ValueError: Not a BERT-style backbone, ``split`` or ``top`` out of range, or left
            padding.
    """
    from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions

    backbone, layers = backbone_layers(model)
    if not 1 <= split < len(layers):
        raise ValueError(f"trunk split must be between 1 and {len(layers) - 1} (the encoder has "
                         f"{len(layers)} layers), got {split}")
    if top is not None and not split <= top <= len(layers):
        raise ValueError(f"trunk top must be between the split {split} and the encoder's "
                         f"{len(layers)} layers, got {top}")
    digest = trunk_digest(backbone, layers, split, dtype)
    memo = TrunkMemo(Path(root) / digest[:16], backbone.config.hidden_size)
    embeddings, encoder = backbone.embeddings, backbone.encoder
    computing = False  # True while the original lower layers compute missing states
    attention_mask: torch.Tensor | None = None  # the mask of the backbone call under way

    def trunk_states(input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        ids = input_ids.cpu().numpy()
        # A text's tokens are those its attention mask keeps: sentence-transformers pads the
        # narrower of several columns embedded together with id 0 (a real token in XLM-R).
        real = (np.ones_like(ids, dtype=bool) if attention_mask is None
                else attention_mask.cpu().numpy().astype(bool))
        lengths = real.sum(axis=1)
        if (real != (np.arange(ids.shape[1]) < lengths[:, None])).any():
            raise ValueError("the trunk memo needs right-padded input ids (pad tokens last)")
        typed = (np.zeros(len(ids), dtype=bool) if token_type_ids is None
                 else token_type_ids.cpu().numpy().astype(bool).any(axis=1))
        keys = [None if t else _token_key(row[:n])
                for row, n, t in zip(ids, lengths, typed, strict=True)]
        found = [None if k is None else memo.get(k) for k in keys]
        missing = [i for i, f in enumerate(found) if f is None]
        if missing:
            nonlocal computing
            rows = input_ids[missing]
            mask = torch.as_tensor(np.arange(ids.shape[1]) < lengths[missing, None],
                                   device=rows.device).long()
            types = None if token_type_ids is None else token_type_ids[missing]
            training = backbone.training
            backbone.eval()
            computing = True
            try:
                # With a dtype, in the dtype the memo is keyed by, whatever the caller runs;
                # without, as the caller runs the model (train_encoder's own precision).
                with torch.no_grad(), autocast(rows.device.type, dtype):
                    out = backbone(input_ids=rows, attention_mask=mask,
                                   token_type_ids=types).last_hidden_state
            finally:
                computing = False
                backbone.train(training)
            for j, i in enumerate(missing):
                found[i] = out[j, : lengths[i]].float().cpu().numpy()
                if keys[i] is not None:
                    memo.put(keys[i], found[i])
        memo.hits += len(keys) - len(missing)
        memo.misses += len(missing) - int(typed.sum())
        batch = np.zeros((*ids.shape, backbone.config.hidden_size), dtype=np.float32)
        for i, states in enumerate(found):
            batch[i, : lengths[i]] = states
        return torch.from_numpy(batch).to(input_ids.device)

    original_embeddings, original_backbone = embeddings.forward, backbone.forward

    def backbone_forward(*args: Any, **kwargs: Any) -> Any:
        nonlocal attention_mask
        attention_mask = kwargs.get("attention_mask")
        return original_backbone(*args, **kwargs)

    def embeddings_forward(input_ids: torch.Tensor | None = None, token_type_ids: Any = None,
                           **kwargs: Any) -> torch.Tensor:
        if computing:
            return original_embeddings(input_ids=input_ids, token_type_ids=token_type_ids,
                                       **kwargs)
        if input_ids is None or kwargs.get("inputs_embeds") is not None:
            raise ValueError("the trunk memo needs input_ids (not inputs_embeds)")
        return trunk_states(input_ids, token_type_ids)

    def encoder_forward(hidden_states: torch.Tensor, attention_mask: Any = None,
                        *args: Any, **kwargs: Any) -> Any:
        # The lower layers when filling the memo, else the top ones (as BertEncoder.forward).
        for layer in (layers[:split] if computing else layers[split:top]):
            hidden_states = layer(hidden_states, attention_mask)
        return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=hidden_states)

    embeddings.forward, encoder.forward = embeddings_forward, encoder_forward
    backbone.forward = backbone_forward
    try:
        yield memo
    finally:
        del embeddings.forward, encoder.forward, backbone.forward  # back to the class methods
        memo.close()
        logger.info("trunk memo %s: %d texts read, %d computed", memo.directory.name,
                    memo.hits, memo.misses)
