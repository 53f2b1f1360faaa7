"""Profiles: named sets of ``params.yaml`` overrides (``configs/profiles/<name>.yaml``).

``multiway profile paper`` merges a profile into ``params.yaml`` in place, the way
``dvc exp run --set-param`` edits it, keeping the file's comments and key order. Every
changed section is checked against its config dataclass before anything is written. The
``default`` profile has no file: it is every config class's defaults (which the committed
``params.yaml`` equals, a test checks), so a default is written once, in its dataclass.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import yaml as pyyaml

from pipeline import config as cfgmod
from pipeline.io import atomic_path
from pipeline.registry import SHARED, STAGES, config_class

PROFILES_DIR = Path(__file__).resolve().parents[1] / "configs" / "profiles"


DEFAULT = "default"


def profile_names(profiles_dir: str | Path = PROFILES_DIR) -> list[str]:
    """Names of the available profiles."""
    return sorted([DEFAULT, *(p.stem for p in Path(profiles_dir).glob("*.yaml"))])


def defaults() -> dict[str, dict]:
    """Every params section as its config class's defaults (the ``default`` profile)."""
    return {section: cfgmod.to_dict(config_class(section)()) for section in [*SHARED, *STAGES]}


def apply_profile(name: str, params_path: str | Path = "params.yaml",
                  profiles_dir: str | Path = PROFILES_DIR) -> list[str]:
    """Merge profile ``name`` into ``params_path``.

    Returns:
        The dotted keys that were set.

    Raises:
        ValueError: Unknown profile, or the merged params fail their dataclass checks.
    """
    from ruamel.yaml import YAML

    path = Path(profiles_dir) / f"{name}.yaml"
    if name != DEFAULT and not path.is_file():
        names = profile_names(profiles_dir)
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"unknown profile '{name}'{hint} (available: {', '.join(names)})")
    yaml = YAML()  # round-trip mode: comments and order survive
    yaml.width = 100
    # Write null as `null` (ruamel's default is an empty value), as params.yaml does, so
    # `multiway profile default` gives back the committed file byte for byte.
    yaml.representer.add_representer(
        type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null"))
    params = yaml.load(Path(params_path).read_text(encoding="utf-8"))
    overrides = defaults() if name == DEFAULT else yaml.load(path.read_text(encoding="utf-8"))
    changed = []
    for section, values in (overrides or {}).items():
        if section not in STAGES and section not in SHARED:
            raise ValueError(f"profile {path}: unknown section '{section}'")
        current = pyyaml.safe_load(_dump(yaml, params.get(section) or {})) or {}
        for key, value in values.items():
            if name == DEFAULT and key in current and current[key] == value:
                continue  # unchanged: keep the file's own spelling of the value
            params.setdefault(section, {})[key] = value
            changed.append(f"{section}.{key}")
        plain = pyyaml.safe_load(_dump(yaml, params[section]))
        cfgmod.from_mapping(config_class(section), plain, where=f"{path}:{section}")
    with atomic_path(params_path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        yaml.dump(params, fh)
    return changed


def _dump(yaml: object, data: object) -> str:
    """Round-trip YAML of ``data`` as text (to re-read it as plain Python objects)."""
    import io

    buf = io.StringIO()
    yaml.dump(data, buf)  # type: ignore[attr-defined]
    return buf.getvalue()
