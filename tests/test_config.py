import ast
import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from pipeline import config as c
from pipeline.cli import SHARED, STAGES
from pipeline.registry import config_class
from pipeline.train.train_encoder import TrainEncoderConfig
from pipeline.translate.translate import TranslateConfig


def test_unknown_key_suggests_the_closest():
    with pytest.raises(ValueError, match="unknown key 'beam_sise'; did you mean 'beam_size'"):
        c.from_mapping(TranslateConfig, {"beam_sise": 2})


def test_wrong_type_names_key_type_and_value():
    with pytest.raises(ValueError, match=r"beam_size: expected int, got str 'four'"):
        c.from_mapping(TranslateConfig, {"beam_size": "four"})


def test_floats_in_scientific_notation_without_a_dot():
    # PyYAML reads "2e-5" (params.yaml or a --learning-rate flag) as a string.
    section = yaml.safe_load("learning_rate: 2e-5")
    assert section == {"learning_rate": "2e-5"}
    assert c.from_mapping(TrainEncoderConfig, section).learning_rate == 2e-5
    for bad in ("fast", "nan", "inf"):
        with pytest.raises(ValueError, match=f"learning_rate: expected float, got str '{bad}'"):
            c.from_mapping(TrainEncoderConfig, {"learning_rate": bad})


def test_literal_and_optional_fields():
    cfg = c.from_mapping(TranslateConfig, {"references": None, "family": "nllb"})
    assert cfg.references is None and cfg.family == "nllb"
    with pytest.raises(ValueError, match="expected one of"):
        c.from_mapping(TranslateConfig, {"family": "t5"})


def test_lists_become_tuples_and_config_is_frozen():
    cfg = c.from_mapping(c.LangsConfig, {"pool": ["deu_Latn"]})
    assert cfg.pool == ("deu_Latn",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.pool = ()  # type: ignore[misc]


def test_missing_section_is_reported(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"translat": {}}))
    with pytest.raises(ValueError, match="no section 'translate' \\(did you mean 'translat'"):
        c.load_section(p, "translate", TranslateConfig)


def test_params_yaml_loads_into_every_stage_config():
    params = c.load_params("params.yaml")
    for name, _stage in STAGES.items():
        c.from_mapping(config_class(name), params[name], where=name)
    for name, _cls in SHARED.items():
        c.from_mapping(config_class(name), params[name], where=name)


def test_dvc_params_match_config_fields():
    dvc = yaml.safe_load(open("dvc.yaml"))
    for name, stage in STAGES.items():
        if name not in dvc["stages"]:
            continue
        spec = dvc["stages"][name]
        declared = set(spec.get("params", []))
        expected = set(stage.shared)
        if "matrix" in spec:
            # The lists a matrix enumerates are not params: adding an item reruns only it.
            cls = config_class(name)
            matrix = getattr(cls, "MATRIX", ())
            expected |= {f"{name}.{f}" for f in c.field_names(cls) if f not in matrix}
        else:
            expected.add(name)  # the whole section
        assert declared == expected, name


#: Modules that parse params and dispatch stages: a change there changes no stage's output.
PLUMBING = {"pipeline/__init__.py", "pipeline/cli.py", "pipeline/registry.py",
            "pipeline/config.py", "pipeline/profiles.py"}


def _module_file(module: str) -> Path:
    path = Path(module.replace(".", "/") + ".py")
    return path if path.exists() else Path(module.replace(".", "/")) / "__init__.py"


def _imported_files(path: Path) -> set[Path]:
    """The pipeline modules ``path`` imports at run time (function-level imports included)."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline"):
            for alias in node.names:
                sub = _module_file(f"{node.module}.{alias.name}")
                found.add(sub if sub.exists() else _module_file(node.module))
        elif isinstance(node, ast.Import):
            found |= {_module_file(a.name) for a in node.names if a.name.startswith("pipeline")}
    return {f for f in found if f.exists()}


def test_dvc_code_deps_cover_every_module_a_stage_runs():
    """A stage reruns when any pipeline module it imports changes (plumbing aside)."""
    dvc = yaml.safe_load(open("dvc.yaml"))["stages"]
    for name, stage in STAGES.items():
        if name not in dvc:
            continue
        code = [d for d in dvc[name]["deps"] if d.startswith("pipeline")]
        seen, todo = set(), [_module_file(stage.module)]
        while todo:
            path = todo.pop()
            if path not in seen:
                seen.add(path)
                todo += _imported_files(path)
        needed = {str(p) for p in seen} - PLUMBING
        missing = sorted(f for f in needed
                         if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in code))
        assert not missing, f"dvc.yaml {name}: deps lack {missing}"


def test_every_config_field_is_documented_where_it_is_declared():
    # The comment beside a field (or the lines right above it) is what `multiway --help` prints.
    def classes(cls):
        yield cls
        for tp in typing.get_type_hints(cls).values():
            if dataclasses.is_dataclass(tp):
                yield from classes(tp)

    configs = [cls for section in [*SHARED, *STAGES] for cls in classes(config_class(section))]
    assert len(configs) > len(STAGES)  # nested sections (DR-MIM's, EPAR's) are checked too
    undocumented = [f"{cls.__name__}.{f.name}" for cls in configs
                    for f in dataclasses.fields(cls) if not c.field_docs(cls).get(f.name)]
    assert undocumented == []
    docs = c.field_docs(config_class("mine"))  # fields of a base class (faiss IndexParams) too
    assert docs["nprobe"].startswith("Lists visited per query")


def test_no_import_circle_in_the_pipeline():
    # Every import statement counts: inside functions and under TYPE_CHECKING too.
    root = Path(c.__file__).parent
    modules = {".".join(f.relative_to(root.parent).with_suffix("").parts).removesuffix(
        ".__init__"): f for f in root.rglob("*.py")}
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                # `from pkg import mod` imports the submodule, `from pkg import name` the package
                targets = [f"{node.module}.{a.name}" for a in node.names
                           if f"{node.module}.{a.name}" in modules] or [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}

    def reaches(start):
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    circles = sorted(name for name in graph if name in reaches(name))
    assert circles == []
