import dataclasses
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline import cli
from pipeline.registry import config_class

ROOT = Path(__file__).resolve().parents[1]


def test_help_does_not_import_heavy_libraries():
    code = (
        "import sys; from pipeline.cli import build_parser; build_parser(); "
        "heavy = [m for m in ('torch', 'transformers', 'ctranslate2', 'mteb', "
        "'sentence_transformers') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_dvc_stage_has_a_script_and_a_subcommand():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "stage")
    assert set(sub.choices) == set(cli.STAGES) | {"profile", "doctor"}
    dvc_stages = yaml.safe_load(open("dvc.yaml"))["stages"]
    for name, stage in dvc_stages.items():
        assert name in sub.choices
        assert stage["cmd"].startswith(f"python stages/{name}.py")
        __import__(f"stages.{name}")


def test_a_stage_is_one_module_named_after_it_holding_its_config_and_run():
    for name, stage in cli.STAGES.items():
        module = importlib.import_module(stage.module)
        assert stage.module.rsplit(".", 1)[-1] == name
        assert config_class(name).__module__ == stage.module and callable(module.run)
        script = (ROOT / "stages" / f"{name}.py")
        assert not script.exists() or f"import {name}" in script.read_text()


def test_flags_override_params(tmp_path, monkeypatch):
    seen = {}

    def fake_run(cfg, langs):
        seen["cfg"], seen["langs"] = cfg, langs
        return {"ok": 1}

    monkeypatch.chdir(tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"build_corpus": {"seed": 5, "max_repeat": 3},
                                      "langs": {"pool": ["deu_Latn"]}}))
    monkeypatch.setattr("pipeline.corpus.build_corpus.run", fake_run)
    assert cli.main(["build_corpus", "--params", str(params), "--max-repeat", "7"]) == 0
    assert seen["cfg"].seed == 5 and seen["cfg"].max_repeat == 7
    assert seen["langs"].pool == ("deu_Latn",)
    assert (tmp_path / "data/metrics/build_corpus.json").read_text().strip().startswith("{")


def test_runtime_part_of_the_metrics_goes_to_an_untracked_file(tmp_path, monkeypatch):
    def fake_run(cfg, langs):
        return {"rows": 3, "runtime": {"rows_per_s": 1.5}}

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"build_corpus": {"seed": 5}}))
    monkeypatch.setattr("pipeline.corpus.build_corpus.run", fake_run)
    assert cli.execute("build_corpus", "params.yaml") == {"rows": 3}
    assert json.loads((tmp_path / "data/metrics/build_corpus.json").read_text()) == {"rows": 3}
    runtime = json.loads((tmp_path / "data/runtime/build_corpus.json").read_text())
    assert runtime["rows_per_s"] == 1.5 and runtime["peak_rss_mb"] > 0
    assert {"wall_seconds", "cpu_seconds", "cpu_model", "hostname", "date", "git"} <= set(runtime)
    assert ".gitignore" in subprocess.run(
        ["git", "check-ignore", "-v", "data/runtime/x.json"], cwd=ROOT, capture_output=True,
        text=True).stdout  # ignored by git, and no DVC stage declares it
    assert "data/runtime" not in (ROOT / "dvc.yaml").read_text()


def test_ad_hoc_output_keeps_its_metrics_next_to_it(tmp_path, monkeypatch):
    def fake_run(cfg, langs, lang):
        return {"sentences": 2, "runtime": {"translate_seconds": 0.1}}

    monkeypatch.chdir(ROOT)  # the project itself: its tracked metrics must stay untouched
    tracked = ROOT / "data/metrics/translate@deu_Latn.json"
    before = (git_status("data/metrics"), tracked.read_bytes() if tracked.exists() else None)
    monkeypatch.setattr("pipeline.translate.translate.run", fake_run)
    out = tmp_path / "x"
    assert cli.main(["translate", "--lang", "deu_Latn", "--output-dir", str(out)]) == 0
    assert (git_status("data/metrics"), tracked.read_bytes() if tracked.exists() else None) \
        == before
    assert json.loads((out / "metrics/translate@deu_Latn.json").read_text()) == {"sentences": 2}
    assert "translate_seconds" in json.loads((out / "runtime/translate@deu_Latn.json").read_text())
    # The params' own output path is no override: the tracked location.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"translate": {"output_dir": "o"}}))
    assert cli.main(["translate", "--lang", "deu_Latn", "--output-dir", "o"]) == 0
    assert (tmp_path / "data/metrics/translate@deu_Latn.json").is_file()
    assert not (tmp_path / "o/metrics").exists()
    # Another params file (a sweep's) that moves the output: next to it too.
    (tmp_path / "data/metrics/translate@deu_Latn.json").unlink()
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({"translate": {"output_dir": "s/o"}}))
    assert cli.main(["translate", "--lang", "deu_Latn", "--params", "sweep.yaml"]) == 0
    assert (tmp_path / "s/o/metrics/translate@deu_Latn.json").is_file()
    assert not (tmp_path / "data/metrics/translate@deu_Latn.json").exists()


def git_status(path: str) -> str:
    return subprocess.run(["git", "status", "--porcelain", "--", path], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout


def test_a_nested_section_flag_merges_into_params(tmp_path, monkeypatch):
    seen = {}

    def fake_run(cfg, langs, task, encoder):
        seen.update(cfg=cfg, task=task, encoder=encoder)
        return None

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train_drmim": {"drmim": {"w_tie": 0.5, "w_mi": 0.2}}}))
    monkeypatch.setattr("pipeline.downstream.train_drmim.run", fake_run)
    assert cli.main(["train_drmim", "--params", str(params), "--task", "bible_genre",
                     "--encoder", "e", "--drmim", "{w_mi: 0.7}"]) == 0
    assert (seen["cfg"].drmim.w_tie, seen["cfg"].drmim.w_mi) == (0.5, 0.7)
    assert (seen["task"], seen["encoder"]) == ("bible_genre", "e")


def test_user_mistakes_exit_2_with_one_line(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"mine": {"k": 4}}))
    assert cli.main(["mine", "--params", str(params)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: mine needs --source and --target text files (one sentence a line)"]
    assert cli.main(["mine", "--params", str(params), "--k", "four"]) == 2
    assert "k: expected int, got str 'four'" in capsys.readouterr().err


def test_matrix_stage_requires_its_key():
    with pytest.raises(SystemExit):
        cli.main(["translate"])


def test_paper_profile_merges_into_valid_params_keeping_comments(tmp_path):
    from pipeline import config as c
    from pipeline.profiles import apply_profile

    params = tmp_path / "params.yaml"
    params.write_text(open("params.yaml").read())
    changed = apply_profile("paper", params)
    assert "translate.model_dir" in changed and "evaluate.suite" in changed
    merged = c.load_params(params)
    assert merged["translate"]["model_dir"] == "data/models/nmt/nllb-200-distilled-600M"
    assert merged["evaluate"]["suite"] == "paper"
    default = c.load_params("params.yaml")
    assert merged["translate"]["shard_size"] == default["translate"]["shard_size"]
    for name, _stage in cli.STAGES.items():
        c.from_mapping(config_class(name), merged[name], where=name)
    assert "# Knobs of the default" in params.read_text()
    with pytest.raises(ValueError, match="unknown profile 'papr'; did you mean 'paper'"):
        apply_profile("papr", params)


def test_default_profile_undoes_the_paper_profile_byte_for_byte(tmp_path):
    from pipeline.profiles import apply_profile

    original = open("params.yaml", encoding="utf-8").read()
    params = tmp_path / "params.yaml"
    params.write_text(original, encoding="utf-8")
    apply_profile("default", params)
    assert params.read_text(encoding="utf-8") == original  # already the default
    apply_profile("paper", params)
    assert params.read_text(encoding="utf-8") != original
    apply_profile("default", params)
    assert params.read_text(encoding="utf-8") == original


def test_params_yaml_holds_every_key_at_its_config_default():
    """Each default is written once, in its dataclass; params.yaml spells it out for DVC."""
    from pipeline import config as c

    shipped = c.load_params("params.yaml")
    assert set(shipped) == set(cli.STAGES) | set(cli.SHARED)
    for section, values in shipped.items():
        cls = config_class(section)
        assert set(values) == {f.name for f in dataclasses.fields(cls)}, section
        loaded, default = c.from_mapping(cls, values, where=section), cls()
        differ = [f.name for f in dataclasses.fields(cls)
                  if getattr(loaded, f.name) != getattr(default, f.name)]
        assert not differ, f"params.yaml {section}: {differ} differ from {cls.__name__}"
