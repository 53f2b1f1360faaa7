"""Typed stage configuration loaded from ``params.yaml``.

Each DVC stage owns one section of ``params.yaml`` and one frozen dataclass here (or in the
module that implements the stage). :func:`from_mapping` turns a section into that dataclass,
rejecting unknown keys (with a "did you mean") and values of the wrong type (naming the key,
the expected type and the value), so a typo in ``params.yaml`` fails in one clear line
instead of silently falling back to a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Collection
from pathlib import Path
from typing import Any, TypeVar

from pipeline.io import read_yaml_mapping

T = TypeVar("T")


def load_params(path: str | Path, sections: Collection[str] | None = None) -> dict[str, Any]:
    """Read a ``params.yaml`` file.

    Args:
        path: The YAML file.
        sections: The top-level keys it may hold (stage names and shared sections); any
            other key is a misspelling and fails with a "did you mean". ``None`` allows any.

    Returns:
        The parsed top-level mapping.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file is not valid YAML, not a mapping, or has an unknown section.
    """
    data = read_yaml_mapping(
        path, f"params file not found: {path}; pass an existing file with --params, or leave "
        "--params out to use params.yaml (defaults when there is none)",
        "hold a mapping of sections")
    for key in data:
        if sections is not None and key not in sections:
            close = difflib.get_close_matches(str(key), list(sections), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(
                f"{path}: unknown section '{key}'{hint}; rename it to a stage or shared "
                f"section ({', '.join(sorted(sections))})"
            )
    return data


def load_section(path: str | Path, section: str, cls: type[T]) -> T:
    """Load one section of a params file into its dataclass.

    Args:
        path: The ``params.yaml`` file.
        section: Top-level key, equal to the stage name.
        cls: The frozen dataclass describing the section.

    Returns:
        An instance of ``cls``.

    Raises:
        ValueError: The section is missing, or a key is unknown or of the wrong type.
    """
    params = load_params(path)
    if section not in params:
        close = difflib.get_close_matches(section, list(params), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ValueError(f"{path} has no section '{section}'{hint}")
    return from_mapping(cls, params[section], where=f"{path}:{section}")


def from_mapping(cls: type[T], data: Any, where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, checking keys and types.

    Nested dataclass fields are built recursively from nested mappings.

    Args:
        cls: A dataclass type.
        data: A mapping (``None`` means "all defaults").
        where: A location used in error messages, e.g. ``params.yaml:translate``.

    Returns:
        An instance of ``cls``.

    Raises:
        ValueError: ``data`` is not a mapping, has an unknown key, lacks a required key, or
            holds a value of the wrong type.
    """
    where = where or cls.__name__
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__} {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ValueError(
                f"{where}: unknown key '{key}'{hint} (allowed: {', '.join(sorted(fields))})"
            )
    kwargs: dict[str, Any] = {}
    for name, field in fields.items():
        if name not in data:
            no_default = (
                field.default is dataclasses.MISSING
                and field.default_factory is dataclasses.MISSING  # type: ignore[misc]
            )
            if no_default:
                raise ValueError(f"{where}: missing required key '{name}'")
            continue
        kwargs[name] = _coerce(hints[name], data[name], f"{where}.{name}")
    return cls(**kwargs)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Check ``value`` against type ``tp``; convert lists to tuples for frozen dataclasses."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    bad = ValueError(
        f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}"
    )
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except ValueError:
                continue
        raise bad
    if origin is typing.Literal:
        if value in args:
            return value
        raise ValueError(f"{where}: expected one of {list(args)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return from_mapping(tp, value, where)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise bad
        item_t = args[0] if args else Any
        return tuple(_coerce(item_t, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        kt, vt = args if args else (Any, Any)
        return {_coerce(kt, k, where): _coerce(vt, v, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 (PyYAML) reads 2e-5 as a string (it wants 2.0e-5): take it as a number.
            try:
                value = float(value)
            except ValueError:
                raise bad from None
            if not math.isfinite(value):
                raise bad
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise bad


def to_dict(cfg: Any) -> dict[str, Any]:
    """Return a dataclass config as plain JSON-able data (tuples become lists)."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def item_dict(cfg: Any) -> dict[str, Any]:
    """:func:`to_dict` without the lists a DVC matrix enumerates (the class's ``MATRIX``).

    One stage item (one model, one seed) does not depend on which other items exist, so
    adding a seed or a regime to ``params.yaml`` reruns only the new items: these fields are
    not DVC params of the stage, nor part of a run's resume fingerprint. (The ``meta.json``
    an item writes keeps the whole config it ran with.)
    """
    matrix = getattr(cfg, "MATRIX", ())
    return {k: v for k, v in to_dict(cfg).items() if k not in matrix}


def field_names(cls: type) -> list[str]:
    """Dotted names of all leaf fields of a config dataclass (nested ones joined by ``.``)."""
    names: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            names.extend(f"{f.name}.{sub}" for sub in field_names(tp))  # type: ignore[arg-type]
        else:
            names.append(f.name)
    return names


def field_docs(cls: type) -> dict[str, str]:
    """Each field's comment: the one on its line, else the comment lines right above it.

    A config class documents its fields where they are declared (``batch_size: int = 32  #
    rows per step``); ``multiway --help`` prints these. Base classes' fields included.
    """
    import ast
    import inspect
    import io
    import textwrap
    import tokenize

    docs: dict[str, str] = {}
    for klass in reversed([c for c in cls.__mro__ if dataclasses.is_dataclass(c)]):
        source = textwrap.dedent(inspect.getsource(klass))
        comments: dict[int, tuple[str, bool]] = {}  # line -> (text, stands alone)
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                alone = not tok.line[: tok.start[1]].strip()
                comments[tok.start[0]] = (tok.string.lstrip("#").strip(), alone)
        body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
        for node in body:
            if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
                continue
            above, line = [], node.lineno - 1
            while line in comments and comments[line][1]:
                above.insert(0, comments[line][0])
                line -= 1
            inline = [comments[n][0] for n in range(node.lineno, node.end_lineno + 1)
                      if n in comments and not comments[n][1]]
            docs[node.target.id] = " ".join(above + inline)
    return docs


# --------------------------------------------------------------------------------------
# Stage configurations. One frozen dataclass per params.yaml section (= DVC stage name).
# Paths are fields too, so dvc.yaml reads them with ${section.key} and the CLI can
# override them with flags; every key is written once, in params.yaml.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LangsConfig:
    """Shared ``langs`` section: the source language and the translation target pool."""

    source: str = "eng_Latn"  # FLORES-200 code of the source text (English).
    # Target languages the corpus is translated into (seen in training).
    pool: tuple[str, ...] = ("deu_Latn", "fra_Latn", "spa_Latn", "rus_Cyrl", "arb_Arab", "kor_Hang")
