"""The encoder catalogue (``configs/encoders.yaml``) and building a SentenceTransformer from it.

A catalogue entry names where an encoder's weights come from (a Hugging Face hub id or a local
directory) and how a sentence embedding is made from its token states: the pooling (``mean``
or ``cls``), the maximum sequence length, the text prefixes the model was trained with
(multilingual-E5 wants ``query: `` / ``passage: ``) and whether the pooled vector is
L2-normalised. The catalogue, not the model directory, is the source of truth for these
settings, so a hub model without a sentence-transformers config gets the same treatment as
a local one.

Normalisation is a per-entry choice: the E5 family is trained and published with a final
``Normalize`` module (its authors score with cosine or dot product on unit vectors), so its
entries keep it; XLM-R and mBERT are plain masked-LM encoders with no such convention, so their
entries leave the mean-pooled vector as it is. Cosine-based losses and cosine evaluation give
the same results either way; it matters only to dot-product scoring.

Prompts: sentence-transformers 6 adds an empty ``document`` prompt to every model that names
none, and both its ``encode_document`` and mteb's document side look ``document`` up first,
so an entry whose documents need a prefix (E5's ``passage: ``) must also name it ``document``.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pipeline.config import from_mapping

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

DEFAULT_CATALOGUE = "configs/encoders.yaml"


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
    """One catalogue entry.

    Attributes:
        key: The catalogue key (e.g. ``me5-small``).
        source: Hugging Face hub id, or a local model directory (relative to the repository
            root, where the pipeline runs).
        pooling: ``mean`` (average of the non-padding token states) or ``cls`` (first token).
        max_seq_length: Longer inputs are truncated to this many tokens (specials included).
        prompts: Prompt name → text prefix, e.g. ``{"query": "query: "}``; empty for none.
        default_prompt: The prompt ``encode`` uses when the caller names none; ``None`` for
            no prefix.
        normalize: Append a ``Normalize`` module (unit-length embeddings).
        stage: The DVC stage that builds a local ``source`` (named when it is missing).
        description: Free text for people.
    """

    key: str
    source: str
    pooling: Literal["mean", "cls"] = "mean"
    max_seq_length: int = 512
    prompts: dict[str, str] = dataclasses.field(default_factory=dict)
    default_prompt: str | None = None
    normalize: bool = False
    stage: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if self.default_prompt is not None and self.default_prompt not in self.prompts:
            raise ValueError(
                f"encoder '{self.key}': default_prompt '{self.default_prompt}' is not one of "
                f"its prompts ({', '.join(self.prompts) or 'none'}); add it or set it to null"
            )
        if self.max_seq_length < 1:
            raise ValueError(
                f"encoder '{self.key}': max_seq_length must be positive, got {self.max_seq_length}"
            )


def load_catalogue(path: str | Path = DEFAULT_CATALOGUE) -> dict[str, EncoderSpec]:
    """Read the encoder catalogue.

    Args:
        path: The catalogue YAML (a mapping of key → entry; YAML anchors and ``<<`` merges
            may share settings between entries).

    Returns:
        Key → :class:`EncoderSpec`, in file order.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file is not a mapping of mappings, or an entry has an unknown key or a
            value of the wrong type.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"encoder catalogue not found: {path}; run from the repository root or pass "
            f"catalogue=<path to encoders.yaml>"
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must map encoder keys to entries, got {type(data).__name__}")
    specs: dict[str, EncoderSpec] = {}
    for key, entry in data.items():
        if not isinstance(entry, dict):
            raise ValueError(f"{path}:{key}: expected a mapping, got {type(entry).__name__}")
        if "key" in entry:
            raise ValueError(f"{path}:{key}: 'key' is implied by the entry's name; remove it")
        specs[str(key)] = from_mapping(EncoderSpec, {"key": str(key), **entry}, f"{path}:{key}")
    return specs


def get_spec(
    key: str, catalogue: str | Path | Mapping[str, EncoderSpec] = DEFAULT_CATALOGUE
) -> EncoderSpec:
    """Look an encoder key up in the catalogue.

    Args:
        key: A catalogue key.
        catalogue: The catalogue file, or an already loaded catalogue.

    Returns:
        The entry.

    Raises:
        ValueError: The key is unknown; the message lists the known keys.
    """
    specs = catalogue if isinstance(catalogue, Mapping) else load_catalogue(catalogue)
    if key not in specs:
        close = difflib.get_close_matches(key, list(specs), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"unknown encoder '{key}'{hint} (known: {', '.join(specs)})")
    return specs[key]


def _looks_like_path(source: str) -> bool:
    """True when ``source`` cannot be a hub id (``org/name`` or ``name``), so is a path."""
    return source.startswith(("/", ".", "~")) or source.count("/") > 1 or "\\" in source


def build_encoder(
    spec: EncoderSpec, source: str | Path | None = None, device: str | None = None
) -> SentenceTransformer:
    """Build a SentenceTransformer from a catalogue entry.

    The modules are ``Transformer`` (the weights and tokenizer of ``source``), ``Pooling``
    (``spec.pooling``) and, when ``spec.normalize``, ``Normalize``; the entry's prefixes
    become the model's prompts.

    Args:
        spec: The catalogue entry.
        source: Overrides ``spec.source`` (the importer builds from its staging directory).
        device: torch device; ``None`` lets sentence-transformers choose.

    Returns:
        The model.

    Raises:
        FileNotFoundError: The source is a local path that does not exist, or neither a
            local directory nor loadable from the hub (offline and not in the HF cache).
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    src = str(source if source is not None else spec.source)
    local = Path(src).expanduser()
    build_hint = f" (build it with `dvc repro {spec.stage}`)" if spec.stage else ""
    if not local.is_dir() and _looks_like_path(src):
        raise FileNotFoundError(
            f"encoder '{spec.key}': local model directory {src} does not exist{build_hint}"
        )
    try:
        transformer = Transformer(
            str(local) if local.is_dir() else src, max_seq_length=spec.max_seq_length
        )
    except OSError as exc:
        # transformers raises OSError both for a missing local file and for a hub id it can
        # neither download nor find in the cache: the user needs the hub or a local copy.
        raise FileNotFoundError(
            f"encoder '{spec.key}': cannot load '{src}' ({str(exc).splitlines()[0]}); it needs "
            f"the Hugging Face hub (or its HF cache), or a local path as its catalogue "
            f"source{build_hint}"
        ) from None
    modules = [transformer, Pooling(transformer.get_embedding_dimension(), spec.pooling)]
    if spec.normalize:
        modules.append(Normalize())
    return SentenceTransformer(
        modules=modules,
        prompts=dict(spec.prompts),
        default_prompt_name=spec.default_prompt,
        device=device,
    )


def load_encoder(
    key_or_path: str | Path,
    catalogue: str | Path | Mapping[str, EncoderSpec] = DEFAULT_CATALOGUE,
    device: str | None = None,
) -> SentenceTransformer:
    """Load an encoder by catalogue key, or a saved sentence-transformers directory.

    A catalogue key is built by :func:`build_encoder` from its entry. Anything else must be
    an existing directory saved by sentence-transformers (e.g. a trained encoder), loaded
    with its own saved modules and prompts.

    Args:
        key_or_path: A key of the catalogue, or a model directory.
        catalogue: The catalogue file, or an already loaded catalogue.
        device: torch device; ``None`` lets sentence-transformers choose.

    Returns:
        The model.

    Raises:
        ValueError: ``key_or_path`` is neither a catalogue key nor a path (lists the keys).
        FileNotFoundError: A path that does not exist, or a source that cannot be loaded.
    """
    specs = catalogue if isinstance(catalogue, Mapping) else load_catalogue(catalogue)
    name = str(key_or_path)
    if name not in specs:
        path = Path(name).expanduser()
        if path.is_dir():
            from sentence_transformers import SentenceTransformer

            return SentenceTransformer(str(path), device=device, local_files_only=True)
        if isinstance(key_or_path, Path) or "/" in name or "\\" in name:
            raise FileNotFoundError(
                f"encoder directory not found: {name} (or use a catalogue key: {', '.join(specs)})"
            )
    return build_encoder(get_spec(name, specs), device=device)
