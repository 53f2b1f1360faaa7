"""``convert_nmt``: a Hugging Face NMT model → a quantised CTranslate2 directory, cached.

Not part of the default ``dvc.yaml`` pipeline (the default profile translates with the
project's own model from ``train_nmt``). To translate with a published model instead::

    multiway convert_nmt --model nllb-200-distilled-600M      # key of configs/nmt.yaml
    multiway convert_nmt --model Helsinki-NLP/opus-mt-en-de   # or any hub id
    multiway convert_nmt --model path/to/hf_model --family marian   # or a local directory

A catalogue key converts its entry's pinned ``revision``; a hub id given directly converts
``main``; either way the commit converted is recorded. The model lands in
``<output_dir>/<name>`` (``name`` = catalogue key or last path part) with
``multiway_nmt.json`` (see :mod:`pipeline.translate.families`); then set
``translate.model_dir`` to it (the paper profile does). A second run with the same source
files, family, quantization and metadata returns at once; ``force: true`` reconverts.

Two converter traps are handled here rather than left to the user:

- Marian: CTranslate2 drops ``<pad>`` from the vocabulary and assumes it is the *last* id;
  models whose ``<pad>`` sits elsewhere are converted with that row moved to the end.
- M2M100 with transformers 5: the ``__xx__`` language tokens are missing from the
  tokenizer's vocabulary map, so CTranslate2 would write ``madeupword*`` in their place and
  every target prefix would become ``<unk>``; the vocabulary is rebuilt from the tokenizer's
  own id table. After converting, every language token is checked at its id.

:func:`convert_hf_model` is also what ``train_nmt`` calls to export the project's model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Literal

from pipeline import langs
from pipeline.config import from_mapping, to_dict
from pipeline.encoders.hub import HUB_FILES, download_command, fetch_snapshot, snapshot_commit
from pipeline.io import read_json, read_yaml_mapping, write_json
from pipeline.runtime import file_hash, write_meta
from pipeline.translate.families import META_FILE, ModelMeta, read_vocabularies


@dataclasses.dataclass(frozen=True)
class ConvertNmtConfig:
    """``convert_nmt``: convert a Hugging Face NMT model to CTranslate2."""

    # The DVC matrix: NMT catalogue keys converted, one stage item each (the default profile trains
    # its own model instead: empty). From the CLI, ``--model`` also takes a hub id or a local
    # directory.
    models: tuple[str, ...] = ()
    # ``auto`` (from the model config), ``marian``, ``m2m100`` or ``nllb``.
    family: Literal["auto", "marian", "m2m100", "nllb"] = "auto"
    # CTranslate2 weight type stored on disk (``int8``, ``float16``, ...).
    quantization: str = "int8"
    # Parent directory; the model lands in ``<output_dir>/<name>``.
    output_dir: str = "data/models/nmt"
    force: bool = False  # Reconvert even when the cached conversion is up to date.

logger = logging.getLogger(__name__)

CATALOG_PATH = Path(__file__).resolve().parents[2] / "configs" / "nmt.yaml"
# Bump when the conversion logic changes, so cached conversions are redone.
CONVERTER_VERSION = 1
QUANTIZATIONS = ("int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16",
                 "bfloat16", "float32")
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


@dataclasses.dataclass(frozen=True)
class CatalogEntry:
    """One model of ``configs/nmt.yaml``.

    Attributes:
        hub_id: Hugging Face model id.
        family: ``marian``, ``m2m100`` or ``nllb``.
        revision: Hub commit converted (``None``: the hub's ``main``); the commit actually
            converted is recorded in ``multiway_nmt.json`` and ``meta.json``.
        source_lang: FLORES code of the source side.
        target_langs: FLORES codes it translates into (``None`` = any its tokenizer knows).
        target_tag: Marian multi-target tag template (see ``ModelMeta.target_tag``).
        note: Free text for users.
    """

    hub_id: str
    family: str
    revision: str | None = None
    source_lang: str = "eng_Latn"
    target_langs: tuple[str, ...] | None = None
    target_tag: str | None = None
    note: str = ""

    def meta_fields(self) -> dict[str, Any]:
        """The fields that go into ``multiway_nmt.json``."""
        fields = {"source_lang": self.source_lang, "target_langs": self.target_langs,
                  "target_tag": self.target_tag}
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in fields.items()
                if v is not None}


def load_catalog(path: str | Path = CATALOG_PATH) -> dict[str, CatalogEntry]:
    """Read the NMT model catalogue (``configs/nmt.yaml``).

    Raises:
        FileNotFoundError: The file is missing.
        ValueError: An entry has an unknown key, a wrong type or an unknown family.
    """
    path = Path(path)
    models = read_yaml_mapping(path, f"NMT catalogue {path} not found",
                               "hold a mapping with models").get("models") or {}
    catalog = {}
    for key, data in models.items():
        entry = from_mapping(CatalogEntry, data, where=f"{path}:{key}")
        ModelMeta.create(entry.family, **entry.meta_fields())  # validates family and codes
        catalog[key] = entry
    return catalog


def resolve_model(model: str, catalog: dict[str, CatalogEntry]
                  ) -> tuple[str, str, CatalogEntry | None]:
    """Interpret a model named to ``convert_nmt``.

    Args:
        model: A catalogue key, an existing local directory, or a hub id.
        catalog: The catalogue.

    Returns:
        ``(name, source, entry)``: output directory name, local directory or hub id to
        convert, and the catalogue entry (also found by hub id) or ``None``.

    Raises:
        FileNotFoundError: ``model`` is none of the three.
    """
    if model in catalog:
        return model, catalog[model].hub_id, catalog[model]
    path = Path(model)
    if path.is_dir():
        return path.resolve().name, str(path), None
    if _HUB_ID.fullmatch(model) and not model.startswith("."):
        key = next((k for k, e in catalog.items() if e.hub_id == model), None)
        return key or model.split("/")[1], model, catalog.get(key) if key else None
    raise FileNotFoundError(
        f"NMT model '{model}' is not a key of {CATALOG_PATH.name} ({', '.join(catalog)}), an "
        "existing directory or a hub id (owner/name); fix convert_nmt.models"
    )


def fetch_model(model: str | Path, revision: str | None = None) -> Path:
    """Return a local directory for a Hugging Face model (downloading it if the hub is up).

    Args:
        model: A local directory or a hub id.
        revision: The hub commit to fetch (``None``: ``main``); ignored for a directory.

    Returns:
        ``model`` itself, or the HF-cache snapshot directory of the commit fetched
        (:func:`~pipeline.encoders.hub.snapshot_commit` names it).

    Raises:
        FileNotFoundError: Neither a local directory nor obtainable from the hub or cache.
    """
    if Path(model).is_dir():
        return Path(model)
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return fetch_snapshot(str(model), revision, files=HUB_FILES)
    except (OSError, ValueError, HfHubHTTPError) as exc:
        pinned = f" at its pinned revision {revision}" if revision else ""
        raise FileNotFoundError(
            f"NMT model '{model}' is not a local directory and cannot be fetched{pinned} from "
            f"the Hugging Face hub or cache ({type(exc).__name__}); download it where the hub is "
            f"reachable (`{download_command(str(model), revision)}`) and copy the HF cache, or "
            "set convert_nmt.models to a local directory"
        ) from None


def detect_family(hf_dir: str | Path) -> str:
    """Tokenisation family of a Hugging Face model directory (from its config files).

    Raises:
        FileNotFoundError: No ``config.json``.
        ValueError: Not a Marian, M2M100 or NLLB model.
    """
    hf_dir = Path(hf_dir)
    config_path = hf_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{hf_dir} has no config.json; it is not a Hugging Face model")
    model_type = read_json(config_path).get("model_type")
    if model_type == "marian":
        return "marian"
    if model_type == "m2m_100":
        tok_config = hf_dir / "tokenizer_config.json"
        tok_class = read_json(tok_config).get("tokenizer_class", "") if tok_config.is_file() else ""
        return "nllb" if str(tok_class).startswith("Nllb") else "m2m100"
    raise ValueError(
        f"{hf_dir} holds a '{model_type}' model; convert_nmt supports Marian (marian) and "
        "M2M100/NLLB (m2m_100) translation models"
    )


# Files a family's Hugging Face directory needs (any one of a tuple), besides config.json.
_REQUIRED = {
    "marian": [("source.spm",), ("target.spm",), ("vocab.json",)],
    "m2m100": [("sentencepiece.bpe.model",), ("vocab.json",)],
    "nllb": [("tokenizer.json", "sentencepiece.bpe.model")],
}
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
            "pytorch_model.bin.index.json")


def _check_files(hf_dir: Path, family: str) -> None:
    """Fail early, in one line, when weights or tokenizer files are missing."""
    missing = [" or ".join(names) for names in [*_REQUIRED[family], _WEIGHTS]
               if not any((hf_dir / name).is_file() for name in names)]
    if missing:
        raise FileNotFoundError(
            f"{hf_dir} is incomplete: no {'; no '.join(missing)}; download the model again or "
            "point convert_nmt.model elsewhere"
        )


def _code_for(value: str | None) -> str | None:
    """FLORES code for an ISO 639-1/-3 code as OPUS-MT tokenizer configs write them."""
    return next((lang.code for lang in langs.LANGUAGES.values()
                 if value and value in (lang.iso1, lang.iso3)), None)


def _check_language_tokens(ct2_dir: Path, tokenizer: Any, family: str) -> None:
    """Fail if any M2M100/NLLB language token is not at its tokenizer id in the CT2 vocab."""
    if family == "m2m100":
        expected = dict(tokenizer.lang_token_to_id)
    elif family == "nllb":
        pattern = re.compile(r"[a-z]{3}_[A-Z][a-z]{3}")
        expected = {t: i for t, i in tokenizer.get_vocab().items() if pattern.fullmatch(t)}
    else:
        return
    vocab = read_vocabularies(ct2_dir)[1]
    wrong = sorted(t for t, i in expected.items() if i >= len(vocab) or vocab[i] != t)
    if wrong or not expected:
        raise ValueError(
            f"converted {family} vocabulary misplaces {len(wrong)} of {len(expected)} language "
            f"tokens (e.g. {', '.join(wrong[:3])}); the model would translate into <unk>"
        )


def _fingerprint(hf_dir: Path, family: str, quantization: str, meta: dict[str, Any]) -> str:
    import ctranslate2

    key = {"source": file_hash(hf_dir), "family": family, "quantization": quantization,
           "meta": meta, "converter": CONVERTER_VERSION, "ctranslate2": ctranslate2.__version__}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def convert_hf_model(hf_dir_or_id: str | Path, out_dir: str | Path, family: str = "auto",
                     quantization: str = "int8", extra_meta: dict[str, Any] | None = None,
                     force: bool = False, revision: str | None = None) -> Path:
    """Convert a Hugging Face Marian/M2M100/NLLB model to CTranslate2 (cached).

    A hub model's ``revision`` (asked for) and ``commit`` (of the snapshot converted) are
    recorded in ``multiway_nmt.json``.

    Args:
        hf_dir_or_id: Local model directory or hub id.
        out_dir: The CTranslate2 directory to write (replaced atomically when done).
        family: ``auto`` (from the config files), ``marian``, ``m2m100`` or ``nllb``.
        quantization: CTranslate2 weight type stored on disk.
        extra_meta: Fields for ``multiway_nmt.json`` (``source_lang``, ``target_langs``,
            ``target_tag``, or anything else to record).
        force: Reconvert even if ``out_dir`` holds the same conversion.
        revision: Hub commit to convert (``None``: ``main``); ignored for a directory.

    Returns:
        ``out_dir``.

    Raises:
        FileNotFoundError: The model cannot be found or fetched.
        ValueError: Unsupported model, family mismatch, bad quantization or metadata.
    """
    out_dir = Path(out_dir)
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization '{quantization}' is not one of {', '.join(QUANTIZATIONS)}")
    hf_dir = fetch_model(hf_dir_or_id, revision)
    detected = detect_family(hf_dir)
    if family == "auto":
        family = detected
    elif family != detected:
        raise ValueError(f"family '{family}' does not match {hf_dir}, which is a {detected} "
                         "model; set family to auto")
    _check_files(hf_dir, family)
    fields: dict[str, Any] = {"source_lang": "eng_Latn", **(extra_meta or {})}
    if not Path(hf_dir_or_id).is_dir():  # a hub model: the commit converted
        fields.update(revision=revision, commit=snapshot_commit(hf_dir))
    if family == "marian" and "target_langs" not in fields:
        tok_config = hf_dir / "tokenizer_config.json"
        target = read_json(tok_config).get("target_lang") if tok_config.is_file() else None
        fields["target_langs"] = [_code_for(target)] if _code_for(target) else None
    fields["max_positions"] = read_json(hf_dir / "config.json").get("max_position_embeddings")
    ModelMeta.create(family, **fields)  # fail on bad metadata before the slow part

    fingerprint = _fingerprint(hf_dir, family, quantization, fields)
    meta_path = out_dir / META_FILE
    if not force and (out_dir / "model.bin").is_file() and meta_path.is_file():
        try:
            cached = read_json(meta_path).get("fingerprint")
        except (json.JSONDecodeError, AttributeError):
            cached = None
        if cached == fingerprint:
            logger.info("%s is up to date with %s; not reconverting", out_dir, hf_dir_or_id)
            return out_dir

    logger.info("converting %s (%s) to CTranslate2 %s in %s", hf_dir_or_id, family,
                quantization, out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.converting"
    shutil.rmtree(tmp, ignore_errors=True)
    from pipeline.translate.ct2_converter import Converter

    converter = Converter(str(hf_dir), family)
    converter.convert(str(tmp), quantization=quantization, force=True)
    # Tokenizer files next to the weights: the engine reads source.spm/target.spm (Marian),
    # sentencepiece.bpe.model (M2M100) or tokenizer.json (NLLB) from here.
    converter.tokenizer.save_pretrained(str(tmp))
    _check_language_tokens(tmp, converter.tokenizer, family)
    meta = ModelMeta.create(
        family, **fields, source_model=str(hf_dir_or_id), quantization=quantization,
        fingerprint=fingerprint,
    )
    write_json(meta.to_dict(), tmp / META_FILE)
    _replace_dir(tmp, out_dir)
    return out_dir


def _replace_dir(new: Path, target: Path) -> None:
    """Put directory ``new`` in place of ``target`` (the old one is removed afterwards)."""
    old = target.parent / f".{target.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def run(cfg: ConvertNmtConfig, model: str) -> dict[str, float]:
    """Stage ``convert_nmt@<model>``: resolve the model, convert it (unless cached), write meta.

    Args:
        cfg: The stage config.
        model: A catalogue key of ``configs/nmt.yaml`` (the DVC matrix item; converted at
            the entry's pinned revision), a hub id (converted at ``main``) or a local
            directory.

    Returns:
        ``converted`` (1 or 0 when the cache was up to date), ``size_mb``, and
        ``seconds`` under ``runtime``.
    """
    catalog = load_catalog()
    name, source, entry = resolve_model(model, catalog)
    revision = catalog[model].revision if model in catalog else None
    family = cfg.family if cfg.family != "auto" or entry is None else entry.family
    out_dir = Path(cfg.output_dir) / name
    model_bin = out_dir / "model.bin"
    before = model_bin.stat().st_mtime_ns if model_bin.is_file() else None
    start = time.perf_counter()
    convert_hf_model(source, out_dir, family=family, quantization=cfg.quantization,
                     extra_meta=entry.meta_fields() if entry else None, force=cfg.force,
                     revision=revision)
    converted = before != model_bin.stat().st_mtime_ns
    if converted:
        converted_meta = read_json(out_dir / META_FILE)
        write_meta(out_dir / "meta.json", to_dict(cfg), source=source,
                   **{k: converted_meta[k] for k in ("revision", "commit") if k in converted_meta})
    size = sum(p.stat().st_size for p in out_dir.iterdir() if p.is_file())
    return {"converted": int(converted), "size_mb": round(size / 2**20, 2),
            "runtime": {"seconds": round(time.perf_counter() - start, 3)}}
