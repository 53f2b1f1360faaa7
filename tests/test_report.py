"""The report stage on a tiny fake data tree (real key shapes, no models: a fake encoder)."""

import dataclasses
import importlib
import inspect
import json
import re
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from matplotlib.figure import Figure as MplFigure

from pipeline import config as c
from pipeline.io import write_json, write_table
from pipeline.live import write_log
from pipeline.report import collect, compare, headline, projection, render, report, results
from pipeline.report.report import ReportConfig
from stages import report as stage

POOL = ["deu_Latn", "fra_Latn"]
UNSEEN = ["ita_Latn", "jpn_Jpan"]
LANGS = c.LangsConfig(source="eng_Latn", pool=tuple(POOL))
MODELS = {"base": "me5-tiny", "enx": "me5-tiny-enx", "multiway": "me5-tiny-multiway"}

# Per-language main scores (0-1) per model and task; enx has no Japanese genre score.
SCORES = {
    "BibleTestBitextMining": {
        "base": {"eng_Latn": .80, "deu_Latn": .90, "fra_Latn": .80, "ita_Latn": .70,
                 "jpn_Jpan": .50},
        "enx": {"eng_Latn": .85, "deu_Latn": .92, "fra_Latn": .86, "ita_Latn": .72,
                "jpn_Jpan": .55},
        "multiway": {"eng_Latn": .88, "deu_Latn": .95, "fra_Latn": .86, "ita_Latn": .74,
                     "jpn_Jpan": .54},
    },
    "BibleGenreClassification": {
        "base": {"eng_Latn": .60, "deu_Latn": .50, "fra_Latn": .40, "ita_Latn": .30,
                 "jpn_Jpan": .20},
        "enx": {"eng_Latn": .60, "deu_Latn": .55, "fra_Latn": .45, "ita_Latn": .35},
        "multiway": {"eng_Latn": .62, "deu_Latn": .58, "fra_Latn": .50, "ita_Latn": .33,
                     "jpn_Jpan": .22},
    },
}


def evaluate_metrics(label: str) -> dict:
    """Flat metrics shaped as pipeline.evaluation.evaluate.flatten writes them."""
    out: dict = {}
    for task, per_model in SCORES.items():
        scores = per_model[label]
        for code, value in scores.items():
            out[f"{task}/lang/{code}"] = value
            if code != "eng_Latn":
                out[f"{task}/{code}-eng_Latn"] = value  # a subset score (not used per language)
        out[f"{task}/seen"] = 0.5
        out[f"{task}/unseen"] = 0.4
        out[f"{task}/mean"] = 0.45
    out.update({"mean/seen": 0.5, "mean/unseen": 0.4, "mean/all": 0.45, "n_tasks": 2})
    return out


def verse(code: str, i: int) -> str:
    return f"{code} verse {i}"


def fake_encoder(missing: str = "me5-tiny-enx"):
    """Embeds "<lang> verse <i>": verse direction plus a language direction.

    The multi-way model's language component is small (translations nearly coincide), the
    base model's large (one cloud per language); ``missing`` raises like a model not built.
    """
    rng = np.random.default_rng(0)
    verse_vecs = rng.normal(size=(100, 16))
    lang_vecs = {code: rng.normal(size=16) for code in ["eng_Latn", *POOL, *UNSEEN]}
    calls = []

    def encode(name: str, sentences: list[str]) -> np.ndarray:
        calls.append((name, len(sentences)))
        if name == missing:
            raise FileNotFoundError(f"encoder directory not found: {name}")
        weight = 0.1 if name.endswith("multiway") else 3.0
        rows = []
        for s in sentences:
            code, _, i = s.split(" ")
            rows.append(verse_vecs[int(i)] + weight * lang_vecs[code])
        return np.array(rows)

    encode.calls = calls  # type: ignore[attr-defined]
    return encode


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def verse_outcomes(label: str) -> pd.DataFrame:
    """Verse-mining outcomes of 40 verses between eng, deu, fra, ita: every model finds
    every verse, except that on the pool-pool pair deu-fra enx misses the odd verses (multiway
    finds them all) and base misses every verse of deu-ita with cosine scoring."""
    rows = []
    for src, tgt in [(a, b) for a in ("eng_Latn", *POOL, "ita_Latn")
                     for b in ("eng_Latn", *POOL, "ita_Latn") if a != b]:
        for scoring in ("cosine", "margin"):
            for verse in range(40):
                correct = not (
                    (label == "enx" and {src, tgt} == {"deu_Latn", "fra_Latn"} and verse % 2)
                    or (label == "base" and {src, tgt} == {"deu_Latn", "ita_Latn"}
                        and scoring == "cosine"))
                rows.append({"src": src, "tgt": tgt, "scoring": scoring, "id": f"v{verse:02d}",
                             "verse": verse, "correct": correct})
    return pd.DataFrame(rows)


def item_outcomes(label: str) -> pd.DataFrame:
    """mteb item outcomes, 20 items per subset: every model gets every item, except that enx
    misses the odd gettext deu-eng messages and base gets half of each Italian genre item
    (half of the classifier fits)."""
    subsets = [("GettextBitextMining", "deu_Latn-eng_Latn", "deu_Latn,eng_Latn"),
               ("GettextBitextMining", "ita_Latn-eng_Latn", "ita_Latn,eng_Latn"),
               ("BibleGenreClassification", "deu_Latn", "deu_Latn"),
               ("BibleGenreClassification", "ita_Latn", "ita_Latn"),
               ("BibleGenreClassification", "eng_Latn", "eng_Latn")]
    rows = []
    for task, subset, codes in subsets:
        for item in range(20):
            correct = 1.0
            if label == "enx" and subset == "deu_Latn-eng_Latn" and item % 2:
                correct = 0.0
            if label == "base" and subset == "ita_Latn":
                correct = 0.5
            rows.append({"task": task, "subset": subset, "split": "test", "langs": codes,
                         "item": item, "correct": correct})
    return pd.DataFrame(rows)


def make_tree(root: Path) -> Path:
    """The fake data tree and a params file pointing at it; returns the params path."""
    metrics = root / "metrics"
    write_json({"lines_read": 120, "lines_kept": 100, "dropped_empty": 5,
                "dropped_duplicate": 15, "dropped_too_long": 0, "dropped_total": 20,
                "chars_mean": 121.5}, metrics / "prepare_source.json")
    write_json({"steps": 500, "train_loss": 3.1, "dev_loss": 3.4,
                "chrf_deu_Latn": 41.2, "bleu_deu_Latn": 12.3, "chrf_fra_Latn": 44.8,
                "bleu_fra_Latn": 14.0, "chrf_mean": 43.0}, metrics / "train_nmt.json")
    for code, chrf in zip(POOL, (39.5, 47.25)):
        write_json({"sentences": 100, "chrf": chrf, "bleu": 10.0},
                   metrics / f"translate@{code}.json")
    for regime, (start, end) in {"enx": (1.2, 0.9), "multiway": (2.0, 2.1)}.items():
        write_json({"steps": 40, "train_loss_first": start + .5, "train_loss_last": end + .5,
                    "dev_loss_start": start, "dev_loss_end": end, "rows_trained": 1280,
                    "stopped_by": "max_steps"},
                   metrics / f"train_encoder@{MODELS[regime]}.json")
        write_log(root / "plots" / MODELS[regime],
                  [{"step": step, "loss": loss, "learning_rate": lr} for step, loss, lr in
                   zip((2, 4, 6), (start + .5, start, end + .5), (1e-5, 2e-5, 1e-5))])
    for label, name in MODELS.items():
        write_json(evaluate_metrics(label), metrics / f"evaluate@{name}.json")
        write_json({"suite": "offline", "tasks": list(SCORES), "seen": ["eng_Latn", *POOL]},
                   root / "eval" / "results" / f"multiway-align__{name}" / "meta.json")
        write_table(verse_outcomes(label),
                    root / "eval" / "results" / f"multiway-align__{name}" / "verse_mining.parquet")
        write_table(item_outcomes(label),
                    root / "eval" / "results" / f"multiway-align__{name}" / "item_outcomes.parquet")
    write_json({
        "rows": {"in": 100, "out": 80, "train": 76, "dev": 4, "enx": 80, "human": 80},
        "dropped_by_reason": {"empty": 0, "repeat": 5, "copy": 3, "script": 12,
                              "too_short": 0, "too_long": 0},
        "dropped_by_lang": {"deu_Latn": 8, "fra_Latn": 15},
        "failures": {"deu_Latn": {"empty": 0, "repeat": 2, "copy": 3, "script": 4,
                                  "too_short": 0, "too_long": 0},
                     "fra_Latn": {"empty": 0, "repeat": 3, "copy": 1, "script": 12,
                                  "too_short": 1, "too_long": 0}},
        "mean_chars": {"eng_Latn": 120.5, "deu_Latn": 130.2, "fra_Latn": 128.0},
        "enx_langs": {"deu_Latn": 40, "fra_Latn": 40},
    }, root / "corpus" / "stats.json")
    write_log(root / "work" / "log", [
        {"step": 250, "epoch": 0, "train_loss": 5.0, "dev_loss": 4.5},
        {"step": 500, "epoch": 1, "train_loss": 3.1, "dev_loss": 3.4},
    ])
    # Japanese lacks verse 3: the projection samples complete rows only.
    table = pd.DataFrame({"id": [f"v{i:02d}" for i in range(30)],
                          **{code: [verse(code, i) for i in range(30)]
                             for code in ["eng_Latn", *POOL, *UNSEEN]}})
    table.loc[3, "jpn_Jpan"] = " "
    write_table(table, root / "seed" / "bible_test.parquet")
    # Downstream: base and multiway encoders; drmim beats finetune on multiway by more than
    # the two spreads, epar's gain on base is within them.
    for encoder, runs in (("me5-tiny", {"finetune": (50.0, 1.0), "drmim": (51.0, 1.0),
                                        "epar": (51.5, 1.0)}),
                          ("me5-tiny-multiway", {"finetune": (55.0, 0.5), "drmim": (61.0, 2.0),
                                                 "epar": (54.0, 1.0)})):
        down = root / "downstream" / "bible_genre" / encoder
        flat = {"runs": 6}
        for variant, (mean, std) in runs.items():
            for key, value in (("dev", 78.0), ("eng_Latn", 80.0), ("zero_shot", mean),
                               ("seen", mean + 2),
                               ("unseen", mean - 1), ("deu_Latn", mean + 3)):
                flat[f"{variant}/accuracy/{key}"] = value
                flat[f"{variant}/accuracy/{key}/std"] = std
            if variant != "finetune":  # evaluate_downstream's interval against finetune
                diff = mean - runs["finetune"][0]
                key = f"{variant}/accuracy/zero_shot/vs_finetune"
                flat.update({key: diff, f"{key}/low": diff - 2 * std,
                             f"{key}/high": diff + 2 * std})
        write_json(flat, down / "metrics.json")
        if encoder.endswith("multiway"):
            fig = MplFigure(figsize=(3, 2))
            fig.subplots().plot([0, 1], [1, 0])
            fig.savefig(down / "features.png", format="png")

    params = {
        "langs": {"source": "eng_Latn", "pool": POOL},
        "report": {
            "base": MODELS["base"],
            "aligned": {"enx": [MODELS["enx"]], "multiway": [MODELS["multiway"]]},
            "focus": "multiway",
            "metrics_dir": str(metrics),
            "corpus_stats": str(root / "corpus" / "stats.json"),
            "plots_dir": str(root / "plots"),
            "nmt_log": str(root / "work" / "log"),
            "eval_dir": str(root / "eval"),
            "downstream_dir": str(root / "downstream"),
            "models_dir": str(root / "models"),
            "projection_data": str(root / "seed" / "bible_test.parquet"),
            "projection_sentences": 12,
            "projection_unseen": UNSEEN,
            "threads": 1,
            "results_doc": str(root / "docs" / "results.md"),
            "output_dir": str(root / "report"),
        },
    }
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """The stage run through stages/report.py on the fake tree (fake projection encoder)."""
    root = tmp_path_factory.mktemp("report_tree")
    params = make_tree(root)
    encode = fake_encoder()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(projection, "model_encoder", lambda **settings: encode)
        assert stage.main(["--params", str(params)]) == 0
    out = root / "report"
    return {"root": root, "params": params, "out": out, "encode": encode,
            "md": (out / "report.md").read_text(), "html": (out / "report.html").read_text()}


def load_cfg(params: Path, **overrides) -> ReportConfig:
    data = yaml.safe_load(params.read_text())["report"]
    data.update(overrides)
    return c.from_mapping(ReportConfig, data)


def with_settings(function, cfg: ReportConfig, *args):
    """``function(*args)`` with its keyword-only parameters taken from the fields of ``cfg``."""
    names = [p.name for p in inspect.signature(function).parameters.values()
             if p.kind is p.KEYWORD_ONLY]
    return function(*args, **{name: getattr(cfg, name) for name in names})


# ------------------------------------------------------------------- the report itself


def table_row(md: str, first: str) -> list[str]:
    """Cells of the first Markdown table row whose first cell is ``first``."""
    for line in md.splitlines():
        cells = [x.strip() for x in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first:
            return cells
    raise AssertionError(f"no row {first!r}")


def section(md: str, heading: str) -> str:
    start = md.index(heading)
    nxt = md.find("\n### ", start + len(heading))
    return md[start: nxt if nxt > 0 else None]


def test_family_table_holds_hand_computed_means_and_relative_changes(built):
    md = built["md"]
    fam = [line for line in md.splitlines() if line.startswith("| Bitext mining | seen")]
    # Seen = deu, fra: base (90+80)/2 = 85.0, enx (92+86)/2 = 89.0, multiway (95+86)/2 = 90.5;
    # relative change (90.5-85)/85 = +6.47 %, (90.5-89)/89 = +1.69 %.
    assert fam == ["| Bitext mining | seen | 1 | 85.0 | 89.0 | 90.5 | +6.5 % | +1.7 % |"]
    # Classification unseen: enx lacks Japanese, so only Italian is comparable:
    # base 30, enx 35, multiway 33 → +10.0 % and (33-35)/35 = -5.7 %.
    assert "| Classification | unseen | 1 | 30.0 | 35.0 | 33.0 | +10.0 % | -5.7 % |" in md
    # All tasks, unseen: bitext (60, 63.5, 64) and genre (30, 35, 33) → 45.0, 49.2(5), 48.5.
    row = table_row(md, "All tasks")
    assert row[:3] == ["All tasks", "seen", "2"]
    unseen = [line for line in md.splitlines() if line.startswith("| All tasks | unseen")][0]
    assert "| 45.0 |" in unseen and "| 48.5 |" in unseen
    assert f"{(48.5 - 45) / 45 * 100:+.1f} %" in unseen
    # Families and tasks follow the order of report.families.
    lines = section(md, "### Per task family").splitlines()
    families = [line.split("|")[1].strip() for line in lines if line.startswith("| ")][1:]
    assert families == ["Bitext mining"] * 2 + ["Classification"] * 2 + ["All tasks"] * 2
    assert md.index("### BibleTestBitextMining") < md.index("### BibleGenreClassification")


def test_sentences_state_wins_ties_and_losses_from_the_data(built):
    bitext = section(built["md"], "### BibleTestBitextMining")
    assert ("BibleTestBitextMining: multiway beats enx on 1 of 2 seen languages (1 tied, "
            "0 worse); mean 90.5 vs 89.0 points, +1.5 points (+1.7 % relative).") in bitext
    assert ("multiway beats enx on 1 of 2 unseen languages (0 tied, 1 worse); mean 64.0 vs "
            "63.5 points, +0.5 points (+0.8 % relative).") in bitext
    assert ("multiway beats base on all 2 unseen languages (0 tied, 0 worse); mean 64.0 vs "
            "60.0 points, +4.0 points (+6.7 % relative).") in bitext
    genre = section(built["md"], "### BibleGenreClassification")
    # Only Italian is scored by both multiway and enx among the unseen languages: a loss.
    assert ("multiway beats enx on 0 of 1 unseen language (0 tied, 1 worse); mean 33.0 "
            "vs 35.0 points, -2.0 points (-5.7 % relative).") in genre
    # Per-language rows with the relative change against base and enx.
    assert table_row(genre, "jpn_Jpan") == ["jpn_Jpan", "unseen", "20.0", "–", "22.0",
                                            "+10.0 %", "n/a"]


def test_corpus_and_training_sections(built):
    md = built["md"]
    assert "120 English lines read, 100 kept (mean 121.5 characters); 20 dropped: duplicate 15, " \
           "empty 5." in md
    assert "100 source sentences, 80 kept in every language (80.0 %)" in md
    assert "The filter dropping most rows is 'script' (12 rows" in md
    assert "fra_Latn fails most often (15 rows)" in md
    # Filter columns in checking order: empty, repeat, copy, script, too_short, too_long.
    assert table_row(md, "fra_Latn")[:8] == ["fra_Latn", "15", "0", "3", "1", "12", "1", "0"]
    mt = section(md, "### Machine translation quality")
    assert table_row(mt, "deu_Latn") == ["deu_Latn", "41.2", "12.3", "39.5", "10.0"]
    assert "chrF (source translations) ranges from 39.5 (deu_Latn) to 47.2 (fra_Latn)" in md
    assert "me5-tiny-enx: dev loss fell from 1.200 to 0.900; me5-tiny-multiway: dev loss rose " \
           "from 2.000 to 2.100." in md
    assert "Suites: base: offline (2 tasks)" in md


def test_report_holds_no_run_dependent_values_and_rebuilds_byte_identically(built, tmp_path):
    for text in (built["md"], built["html"]):
        assert "Git revision" not in text and "sentences/s" not in text
        assert not re.search(r"\b\d{4}-\d{2}-\d{2}\b|\bseconds\b| min\)", text)
    assert "data/runtime/" in built["md"]
    again = tmp_path / "again"
    params = tmp_path / "params.yaml"
    data = yaml.safe_load(built["params"].read_text())
    data["report"]["output_dir"] = str(again)
    params.write_text(yaml.safe_dump(data))
    with pytest.MonkeyPatch.context() as mp:
        encode = fake_encoder()  # a fresh one: the fixture's records its calls
        mp.setattr(projection, "model_encoder", lambda **settings: encode)
        assert stage.main(["--params", str(params)]) == 0

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes()
                for p in sorted(root.rglob("*")) if p.is_file()}

    first, second = files(built["out"]), files(again)
    assert first.keys() == second.keys() and "figures/corpus.png" in first
    assert [k for k in first if first[k] != second[k]] == []


def test_projection_uses_complete_verses_and_reports_alignment(built):
    md = built["md"]
    # 12 verses × 5 languages per model; enx "is not built" and is reported, not fatal.
    assert built["encode"].calls == [("me5-tiny", 60), ("me5-tiny-enx", 60),
                                     ("me5-tiny-multiway", 60)]
    assert "Model not available: enx (encoder directory not found: me5-tiny-enx)." in md
    assert "12 Bible test verses in 5 languages" in md
    # The fake multi-way model puts translations almost on top of each other.
    assert re.search(r"unseen languages: top-1 base [\d.]+ %, multiway 100\.0 %", md)


def test_downstream_section_is_data_driven(built):
    md = built["md"]
    assert table_row(md, "drmim") == [
        "drmim", "78.0 ± 1.0", "80.0 ± 1.0", "51.0 ± 1.0", "53.0 ± 1.0", "50.0 ± 1.0",
        "78.0 ± 2.0", "80.0 ± 2.0", "61.0 ± 2.0", "63.0 ± 2.0", "60.0 ± 2.0"]
    assert ("- base: drmim +1.0 [-1.0, +3.0] (no difference at this power); epar +1.5 "
            "[-0.5, +3.5] (no difference at this power).") in md
    assert ("- multiway: drmim +6.0 [+2.0, +10.0] (win); epar -1.0 [-3.0, +1.0] (no "
            "difference at this power).") in md
    # base, per subset: finetune (the baseline) first
    assert "| deu_Latn | 53.0 ± 1.0 | 54.0 ± 1.0 | 54.5 ± 1.0 |" in md
    assert "(figures/downstream_bible_genre_accuracy.png)" in md
    assert "(figures/downstream_bible_genre_me5-tiny-multiway.png)" in md


def test_figures_are_readable_pngs_and_html_embeds_them(built):
    figs = sorted((built["out"] / "figures").glob("*.png"))
    names = {p.name for p in figs}
    assert {"corpus.png", "training.png", "families.png", "projection.png",
            "results_BibleTestBitextMining.png", "results_BibleGenreClassification.png",
            "downstream_bible_genre_accuracy.png",
            "downstream_bible_genre_me5-tiny-multiway.png"} == names
    for p in figs:
        if not p.name.startswith("downstream"):
            w, h = png_size(p)
            assert w >= 600 and h >= 400, p
    html = built["html"]
    uris = re.findall(r'<img src="([^"]+)"', html)
    assert len(uris) == len(figs)
    assert all(u.startswith("data:image/png;base64,") for u in uris)
    embedded = {render.png_data_uri(p) for p in figs}
    assert set(uris) == embedded
    # Self-contained: no link, script, stylesheet or URL of any kind.
    assert not re.search(r"https?://|<link|<script|src=\"(?!data:)|url\(", html)
    md_links = re.findall(r"\]\((figures/[^)]+)\)", built["md"])
    assert sorted(md_links) == sorted(f"figures/{n}" for n in names)


def test_verse_mining_section_gives_paired_intervals_and_verdicts(built):
    md = built["md"]
    section = md[md.index("### Verse mining with paired"):md.index("### mteb tasks")]
    # Accuracy: enx finds half of deu-fra's verses in both directions (2 of 2 pool-pool pairs).
    assert table_row(section, "pool–pool (two non-English seen languages)")[:8] == [
        "pool–pool (two non-English seen languages)", "2", "100.00", "100.00", "50.00",
        "50.00", "100.00", "100.00"]
    rows = [r for r in section.splitlines() if r.startswith("| multiway − enx")]
    pool = next(r for r in rows if "pool–pool" in r)
    # Each verse differs by 0 or 1 (its mean over deu→fra and fra→deu): a clear win.
    assert "+50.00 [+" in pool and pool.rstrip(" |").endswith("win")
    same = next(r for r in rows if "X↔English, seen X" in r)
    # Both find every verse: marked as at the ceiling (no room left for a difference).
    assert "+0.00 [+0.00, +0.00]" in same and "no difference at this power (at ceiling)" in same
    base = next(r for r in section.splitlines()
                if r.startswith("| enx − base") and "seen–unseen" in r)
    cells = [x.strip() for x in base.strip().strip("|").split("|")]
    # base misses deu-ita (2 of the 4 seen-unseen pairs) with cosine only.
    assert cells[2].startswith("+50.00") and cells[3] == "+0.00 [+0.00, +0.00]"
    assert ("multiway − enx (margin scoring): no difference at this power (at ceiling) on "
            "X↔English, seen X "
            "(+0.00 [+0.00, +0.00]), X↔English, unseen X (+0.00 [+0.00, +0.00]), seen–unseen "
            "(+0.00 [+0.00, +0.00]); win on pool–pool (two non-English seen languages) (+50.00 "
            "[+33.81, +66.19]).") in section  # 40 verses of 0 or 1: 50 ± t(39) × 8.01


def test_verse_mining_averages_seeds_and_shows_each_seeds_difference(built, tmp_path):
    root = built["root"]
    second = verse_outcomes("multiway")  # seed 2 of multiway misses verses 0-9 on deu→fra
    second.loc[(second.src == "deu_Latn") & (second.tgt == "fra_Latn") & (second.verse < 10),
               "correct"] = False
    write_table(second, root / "eval" / "results" / "multiway-align__me5-tiny-multiway-2"
                / "verse_mining.parquet")
    write_table(verse_outcomes("enx"), root / "eval" / "results"
                / "multiway-align__me5-tiny-enx-2" / "verse_mining.parquet")
    cfg = ReportConfig(base=MODELS["base"], eval_dir=str(root / "eval"), aligned={
        "enx": (MODELS["enx"], "me5-tiny-enx-2"),
        "multiway": (MODELS["multiway"], "me5-tiny-multiway-2")})
    blocks, _ = with_settings(headline.verse_mining_section, cfg, LANGS)
    assert "Seeds per model: base 1, enx 2, multiway 2" in blocks[1].text
    accuracy, intervals = blocks[2], blocks[3]
    pool = next(r for r in accuracy.rows if r[0].startswith("pool–pool"))
    # multiway: seed 1 finds all 80 pool-pool outcomes, seed 2 misses 10 of them.
    assert pool[accuracy.columns.index("multiway margin")] == f"{(1 + 70 / 80) / 2 * 100:.2f}"
    row = next(r for r in intervals.rows if r[0] == "multiway − enx" and r[1].startswith("pool"))
    per_seed = row[intervals.columns.index("margin Δ per seed")]
    assert per_seed == f"+50.00 / {(70 - 40) / 80 * 100:+.2f}"  # seed i against seed i
    base = next(r for r in intervals.rows if r[0] == "multiway − base" and r[1].startswith("pool"))
    assert base[intervals.columns.index("margin Δ per seed")] == "+0.00 / -12.50"


def test_mteb_items_headline_pairs_items_per_task_and_group(built):
    md = built["md"]
    section = md[md.index("### mteb tasks with paired"):md.index("## Corpus")]
    rows = {(r[0], r[1], r[2]): r for r in (
        [x.strip() for x in line.strip().strip("|").split("|")]
        for line in section.splitlines() if line.startswith("| ") and " − " in line)}
    gettext = rows["multiway − enx", "GettextBitextMining", "X↔English, seen X"]
    assert gettext[3] == "20" and gettext[4].startswith("+50.00 [+") and gettext[-1] == "win"
    assert gettext[5] == "+50.00"  # one seed each
    same = rows["multiway − enx", "GettextBitextMining", "X↔English, unseen X"]
    assert same[4] == "+0.00 [+0.00, +0.00]"
    assert same[-1] == "no difference at this power (at ceiling)"
    genre = rows["multiway − base", "BibleGenreClassification", "unseen languages"]
    assert genre[4] == "+50.00 [+50.00, +50.00]" and genre[-1] == "win"
    assert ("multiway − base", "BibleGenreClassification", "the source language") in rows
    assert "enx − base: " in section


def test_headline_table_has_every_difference_on_every_measure(built):
    md = built["md"]
    section = md[md.index("## Headline: regime differences"):md.index("### Verse mining")]
    header = table_row(section, "difference")
    assert header[1:] == [
        "X↔English, seen X mining", "X↔English, unseen X mining",
        "pool–pool (two non-English seen languages) mining", "seen–unseen mining",
        "GettextBitextMining, X↔English, seen X", "GettextBitextMining, X↔English, unseen X",
        "BibleGenreClassification, seen languages", "BibleGenreClassification, unseen languages",
        "BibleGenreClassification, the source language"]
    row = table_row(section, "multiway − enx")
    assert row[3].startswith("+50.00 [+") and row[3].endswith("win")
    assert row[5].startswith("+50.00 [+") and row[5].endswith("win (Holm)")
    # The primary endpoint keeps its own verdict; the other 26 cells are one Holm family.
    assert row[3].endswith("] win") and "The other 26 differences below are corrected" in md
    assert "Primary endpoint (declared before the run): multiway − enx on pool–pool" in md
    assert [r[0] for r in (table_row(section, d) for d in (
        "multiway − enx", "enx − base", "multiway − base"))] == [
        "multiway − enx", "enx − base", "multiway − base"]
    assert "models per label (training seeds): base 1, enx 1, multiway 1" in section


def test_headline_metrics_and_plot_tables_repeat_the_headline_table(built):
    """``headline.json`` and the bar tables hold the numbers the headline table prints."""
    md = built["md"]
    section = md[md.index("## Headline: regime differences"):md.index("### Verse mining")]
    header = table_row(section, "difference")
    pool = header.index("pool–pool (two non-English seen languages) mining")
    cell = table_row(section, "multiway − enx")[pool]
    delta, low, high = (float(x) for x in re.findall(r"[+-]\d+\.\d+", cell)[:3])
    headline = json.loads((built["out"] / "headline.json").read_text())
    primary = {k: headline["primary"][k] for k in ("delta", "low", "high")}
    assert primary == pytest.approx({"delta": delta, "low": low, "high": high}, abs=0.005)
    assert 0 <= headline["primary"]["p"] < 0.05
    assert headline["differences"]["multiway − enx"][header[pool]] == headline["primary"]
    assert set(headline["differences"]) == {"multiway − enx", "enx − base", "multiway − base"}
    differences = pd.read_csv(built["out"] / "plots" / "differences.csv")
    assert len(differences) == sum(len(m) for m in headline["differences"].values())
    row = differences[differences.measure == f"multiway − enx: {header[pool]}"].iloc[0]
    assert row.delta == pytest.approx(delta, abs=0.005)
    languages = pd.read_csv(built["out"] / "plots" / "languages.csv")
    scores = pd.read_csv(built["out"] / "scores.csv")
    expected = scores[scores.model == "multiway"].groupby("lang").score.mean()
    assert languages.set_index("lang").score.to_dict() == pytest.approx(expected.to_dict(),
                                                                        abs=1e-4)


def test_verdict_says_when_seeds_disagree_or_the_measure_is_at_its_ceiling():
    from pipeline.stats import paired_interval

    items = np.arange(400)
    base = pd.Series((items % 5 > 0).astype(float))  # 80 %
    up = pd.Series((items % 10 > 0).astype(float))  # 90 %: 40 items better
    down = pd.Series((items % 5 > 0) & (items != 1)).astype(float)  # one item worse
    iv, seeds, said = headline._paired([up, down], [base])
    assert seeds == "+10.00 / -0.25" and said == f"{iv.verdict} (seeds disagree)"
    _, _, said = headline._paired([up, up], [base])
    assert said == "win"
    # Unequal seed counts: the seed means, with no seed term (no pairing of seeds).
    iv, seeds, _ = headline._paired([up, down, up], [base, up])
    assert iv == paired_interval((up + down + up).to_numpy() / 3, (base + up).to_numpy() / 2)
    assert seeds == "+5.00 / -5.25 / +5.00"  # each seed against the mean of the two
    top = pd.Series(np.ones(400))
    _, _, said = headline._paired([top], [top])
    assert said == "no difference at this power (at ceiling)"


def test_results_doc_is_the_report_without_figures(built):
    doc = (built["root"] / "docs" / "results.md").read_text()
    assert doc.startswith("# Results of the default run\n") and "Do not edit by hand" in doc
    assert "![" not in doc and "![" in built["md"]
    # Every table and verdict of the report is in the doc, headline first.
    tables = [line for line in built["md"].splitlines() if line.startswith("|")]
    assert tables and all(line in doc for line in tables)
    assert doc.index("## Headline: regime differences") < doc.index("## Corpus")


def test_paired_interval_matches_its_definition():
    from scipy import stats

    from pipeline.stats import paired_interval

    rng = np.random.default_rng(0)
    b = rng.random(500)
    shifted = paired_interval(b + 0.1, b)
    assert shifted.diff == pytest.approx(0.1) and shifted.low == pytest.approx(0.1)
    assert shifted.verdict == "win" and shifted.detectable == pytest.approx(0.0, abs=1e-12)
    a = rng.random(500)
    iv = paired_interval(a, b)
    d = a - b
    se = d.std(ddof=1) / np.sqrt(len(d))
    t = stats.t.ppf(0.975, len(d) - 1)
    assert iv.diff == pytest.approx(d.mean())
    assert (iv.low, iv.high) == pytest.approx((d.mean() - t * se, d.mean() + t * se))
    assert iv.detectable == pytest.approx((t + stats.t.ppf(0.8, len(d) - 1)) * se)
    assert iv.verdict == "no difference at this power"
    assert paired_interval(b, b + 0.1).verdict == "loss"
    with pytest.raises(ValueError, match="two equal, non-empty arrays"):
        paired_interval(a, b[:10])
    with pytest.raises(ValueError, match="every seed must score every item"):
        paired_interval(np.stack([a, np.full(500, np.nan)]), b[None])
    # Clusters: one item each is the plain interval; five copies of each of 100 items count
    # as 100 units, not 500 (the interval of the 100 items, √5 wider than 500 copies).
    alone = paired_interval(a, b, clusters=np.arange(500))
    assert (alone.low, alone.high) == pytest.approx((iv.low, iv.high))
    copies = paired_interval(np.repeat(a[:100], 5), np.repeat(b[:100], 5),
                             clusters=np.repeat(np.arange(100), 5))
    hundred = paired_interval(a[:100], b[:100])
    assert (copies.low, copies.high) == pytest.approx((hundred.low, hundred.high))
    independent = paired_interval(np.repeat(a[:100], 5), np.repeat(b[:100], 5))
    assert copies.high - copies.low > 2.1 * (independent.high - independent.low)


def test_paired_interval_counts_the_training_seeds():
    from scipy import stats

    from pipeline.stats import paired_interval

    rng = np.random.default_rng(0)
    b = rng.random(500)
    # One seed row is the item interval; one row of b (the base) is set against every seed.
    assert paired_interval(b[None] + 0.1, b[None]) == paired_interval(b + 0.1, b)
    both = paired_interval(np.stack([b + 0.1, b + 0.3]), b[None])
    assert both == paired_interval(np.stack([b + 0.1, b + 0.3]), np.stack([b, b]))
    assert both.diff == pytest.approx(0.2) and both.items == 500
    # Seeds that gain +0.04, lose 0.02 and gain 0.01 on every item: their mean (+0.01) is the
    # same on every item, so the items alone would make it certain; the seeds do not.
    seeds = np.stack([b + 0.04, b - 0.02, b + 0.01])
    iv = paired_interval(seeds, b[None])
    se = np.std([0.04, -0.02, 0.01], ddof=1) / np.sqrt(3)
    assert iv.diff == pytest.approx(0.01)
    assert (iv.low, iv.high) == pytest.approx((0.01 - stats.t.ppf(0.975, 2) * se,
                                               0.01 + stats.t.ppf(0.975, 2) * se))
    assert iv.verdict == "no difference at this power"
    assert paired_interval(seeds.mean(axis=0), b).verdict == "win"


def test_holm_adjusts_step_down_and_keeps_the_order():
    from pipeline.stats import holm

    # Sorted 0.01, 0.03, 0.04 → ×3, ×2, ×1 = 0.03, 0.06, 0.04 → monotone: 0.03, 0.06, 0.06.
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


@pytest.mark.parametrize(("seeds", "items", "sd_seed", "sd_item", "sd_both", "clustered"), [
    (3, 300, 0.05, 0.3, 0.3, False),  # the seed term matters: t with about two df
    (3, 300, 0.02, 0.3, 0.3, False),
    (5, 300, 0.03, 0.3, 0.3, False),
    (3, 400, 0.03, 0.3, 0.2, True),  # clusters of five items sharing an effect
])
def test_paired_interval_covers_the_true_difference_95_percent_of_the_time(
        seeds, items, sd_seed, sd_item, sd_both, clustered):
    """Simulated scores with known seed, item and seed × item variance, no true difference."""
    from pipeline.stats import paired_interval

    rng = np.random.default_rng(7)
    clusters = np.repeat(np.arange(items // 5), 5) if clustered else None
    covered = 0
    runs = 2000
    for _ in range(runs):
        item = rng.normal(0, sd_item, items)
        if clustered:
            item = item + rng.normal(0, sd_item, items // 5)[clusters]
        d = (rng.normal(0, sd_seed, (seeds, 1)) + item[None]
             + rng.normal(0, sd_both, (seeds, items)))
        iv = paired_interval(d, np.zeros((1, items)), clusters=clusters)
        covered += iv.low <= 0 <= iv.high
    assert 0.93 <= covered / runs <= 0.97


def test_scores_csv_is_the_tidy_table(built):
    df = pd.read_csv(built["out"] / "scores.csv")
    row = df[(df.task == "BibleTestBitextMining") & (df.lang == "ita_Latn")
             & (df.model == "multiway")]
    assert row.score.tolist() == pytest.approx([74.0])
    assert row.group.tolist() == ["unseen"] and row.name.tolist() == ["me5-tiny-multiway"]
    n = sum(len(v) for per in SCORES.values() for v in per.values())
    assert len(df) == n


# -------------------------------------------------------------- missing and malformed


def test_missing_inputs_give_not_run_sections(tmp_path):
    cfg = ReportConfig(metrics_dir=str(tmp_path / "m"), corpus_stats=str(tmp_path / "s.json"),
                         plots_dir=str(tmp_path / "p"), nmt_log=str(tmp_path / "h"),
                         eval_dir=str(tmp_path / "e"), downstream_dir=str(tmp_path / "d"),
                         projection_data=str(tmp_path / "t.parquet"),
                         output_dir=str(tmp_path / "out"), results_doc="")
    report.run(cfg, LANGS, encode=fake_encoder())
    md = (tmp_path / "out" / "report.md").read_text()
    for what in ("source text", "multi-way corpus", "NMT training", "projection data"):
        assert f"Not run: {what} (" in md
    assert "Not run: neither train_nmt nor translate@\\<lang> metrics exist" in md
    assert "Not run: no evaluate@\\<model> metrics" in md
    assert "Not run: no downstream results" in md
    assert "Not run: no verse_mining.parquet in" in md
    assert "Not run: no debian_mining.parquet in" in md
    assert table_row(md, "multiway")[2] == "not run"
    assert "data:image/png" not in (tmp_path / "out" / "report.html").read_text()


def test_malformed_metrics_file_is_named(tmp_path, capsys):
    params = make_tree(tmp_path)
    bad = tmp_path / "metrics" / "evaluate@me5-tiny-enx.json"
    bad.write_text('{"BibleTestBitextMining/lang/deu_Latn": 0.5,')
    assert stage.main(["--params", str(params)]) == 2
    assert f"error: {bad} is not valid JSON" in capsys.readouterr().err


@pytest.mark.parametrize(("name", "content", "message"), [
    ("metrics/evaluate@me5-tiny.json", '{"BibleTestBitextMining/lang/xx_Latn": 0.5}',
     r"evaluate@me5-tiny.json: key 'BibleTestBitextMining/lang/xx_Latn': unknown language"),
    ("metrics/evaluate@me5-tiny.json", '{"mean/all": 0.5}', r"has no per-language score"),
    ("metrics/evaluate@me5-tiny.json", '{"T/lang/deu_Latn": "high"}', r"must be a number"),
    ("metrics/train_nmt.json", '{"chrf": {"deu_Latn": 40}}', r"is not a flat metrics file"),
    ("plots/me5-tiny-enx/plots/metrics/loss.tsv", "epoch\tloss\n1\t0.1\n",
     r"is not a DVCLive series"),
    ("plots/me5-tiny-enx/plots/metrics/loss.tsv", "step\tlr\n1\t0.1\n",
     r"is not a DVCLive series"),
    ("corpus/stats.json", '{"rows": {}}', r"is not a build_corpus stats file"),
    ("work/log/plots/metrics/dev_loss.tsv", "step\tloss\n1\t0.1\n", r"not a DVCLive series"),
])
def test_malformed_inputs_raise_value_errors_naming_the_file(tmp_path, name, content, message):
    params = make_tree(tmp_path)
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / Path(name).parent)) + ".*"
                       + message):
        report.run(load_cfg(params, projection_sentences=0), LANGS, encode=fake_encoder())


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="report.focus 'human' is not a regime of "
                                         "report.aligned \\(enx, multiway\\)"):
        report.check_config(ReportConfig(focus="human"), LANGS)
    with pytest.raises(ValueError, match="report.aligned has a regime called 'base'"):
        report.check_config(ReportConfig(aligned={"base": ("x",), "multiway": ("y",)}), LANGS)
    with pytest.raises(ValueError, match="unknown language code 'ita'"):
        report.check_config(ReportConfig(projection_unseen=("ita",)), LANGS)
    with pytest.raises(ValueError, match="projection_sentences must be >= 0"):
        report.check_config(ReportConfig(projection_sentences=-1), LANGS)


# ------------------------------------------------------------------------- the pieces


def test_pca_matches_the_covariance_eigenvectors():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 6)) @ rng.normal(size=(6, 6))
    xy, explained = projection.pca_2d(x)
    centred = x - x.mean(0)
    values, vectors = np.linalg.eigh(np.cov(centred, rowvar=False))
    top = vectors[:, ::-1][:, :2]
    ref = centred @ top
    for k in range(2):  # equal up to the sign of each axis
        assert np.allclose(np.abs(xy[:, k]), np.abs(ref[:, k]))
        assert np.abs(top[:, k]).argmax() == np.abs(xy[:, k] @ centred).argmax()
    assert np.allclose(explained, values[::-1][:2] / values.sum())


def test_alignment_stats_equal_a_brute_force_loop():
    rng = np.random.default_rng(2)
    emb = rng.normal(size=(7, 3, 5))
    stats = projection.alignment_stats(emb, ["eng_Latn", "deu_Latn", "jpn_Jpan"])

    def cos(a, b):
        return a @ b / np.linalg.norm(a) / np.linalg.norm(b)

    for j, row in enumerate(stats.itertuples(), start=1):
        sims = [[cos(emb[i, j], emb[k, 0]) for k in range(7)] for i in range(7)]
        assert row.top1 == pytest.approx(np.mean([np.argmax(s) == i for i, s in enumerate(sims)]))
        assert row.cos_parallel == pytest.approx(np.mean([sims[i][i] for i in range(7)]))
        assert row.cos_other == pytest.approx(
            np.mean([sims[i][k] for i in range(7) for k in range(7) if i != k]))


def test_sample_verses_keeps_complete_rows_and_names_missing_languages(tmp_path):
    table = pd.DataFrame({"id": ["a", "b", "c"], "eng_Latn": ["x", "y", "z"],
                          "deu_Latn": ["x", None, "z"]})
    write_table(table, tmp_path / "t.parquet")
    sample, missing = projection.sample_verses(tmp_path / "t.parquet",
                                               ["eng_Latn", "deu_Latn", "ita_Latn"], 5, 0)
    assert sample.id.tolist() == ["a", "c"] and missing == ["ita_Latn"]
    with pytest.raises(ValueError, match="needs an 'id' and a 'fra_Latn' column"):
        projection.sample_verses(tmp_path / "t.parquet", ["fra_Latn"], 5, 0)


def test_compare_counts_ties_within_display_precision():
    matrix = pd.DataFrame({"a": [50.0, 60.0, 70.0, 80.0], "b": [50.04, 59.0, 71.0, np.nan]},
                          index=["deu_Latn", "fra_Latn", "ita_Latn", "jpn_Jpan"])
    seen = compare.compare(matrix, "T", "seen", "a", "b", LANGS)
    assert (seen.wins, seen.ties, seen.losses) == (1, 1, 0)
    unseen = compare.compare(matrix, "T", "unseen", "a", "b", LANGS)
    assert (unseen.n, unseen.losses) == (1, 1)  # Japanese has no score for b
    assert compare.relative_change(55.0, 50.0) == pytest.approx(10.0)
    assert np.isnan(compare.relative_change(1.0, 0.0))


def test_markdown_and_html_escape_cells():
    blocks = [render.Table(("a|b", "<c>"), (("1|2", "x & y"),))]
    md = render.to_markdown(blocks, Path("."))
    assert "| a\\|b | \\<c> |" in md and "| 1\\|2 | x & y |" in md
    html = render.to_html(blocks, "t")
    assert "<th>&lt;c&gt;</th>" in html and "<td>x &amp; y</td>" in html


def test_collect_reads_absent_files_as_none(tmp_path):
    assert collect.read_metrics(tmp_path / "none.json") is None
    assert collect.loss_curve(tmp_path / "none") is None
    write_log(tmp_path / "log", [{"step": 1, "train_loss": 2.0}])
    with pytest.raises(ValueError, match=r"without \['dev_loss'\].*rerun the train_nmt"):
        collect.nmt_history(tmp_path / "log")
    assert collect.downstream_results(tmp_path) == []


def test_projection_without_a_complete_verse_says_so(tmp_path):
    table = pd.DataFrame({"id": ["a"], "eng_Latn": ["x"], "deu_Latn": ["y"], "fra_Latn": [""]})
    write_table(table, tmp_path / "t.parquet")
    cfg = ReportConfig(projection_data=str(tmp_path / "t.parquet"), projection_unseen=())
    encode = fake_encoder()
    blocks = with_settings(projection.projection_section, cfg, LANGS, tmp_path, encode)
    assert blocks[-1] == render.Paragraph(
        f"No verse of {tmp_path / 't.parquet'} has text in every one of eng_Latn, deu_Latn, "
        "fra_Latn; nothing to project.")
    assert encode.calls == []


def test_a_model_not_evaluated_leaves_its_column_empty(tmp_path):
    params = make_tree(tmp_path)
    (tmp_path / "metrics" / "evaluate@me5-tiny-enx.json").unlink()
    report.run(load_cfg(params, projection_sentences=0), LANGS)
    md = (tmp_path / "report" / "report.md").read_text()
    assert "Not run: evaluate@me5-tiny-enx (their columns are empty)." in md
    assert "Skipped (report.projection_sentences is 0)." in md
    # Without enx, Japanese is comparable in the genre task again: (22+33)/2 vs (20+30)/2.
    assert "| Classification | unseen | 1 | 25.0 | – | 27.5 | +10.0 % | n/a |" in md
    bitext = section(md, "### BibleTestBitextMining")
    assert "multiway beats enx" not in bitext and "multiway beats base on all 2 seen" in bitext


def test_encoders_side_by_side_table(tmp_path):
    from pipeline.io import write_json

    metrics = tmp_path / "metrics"
    for label, name in MODELS.items():
        write_json(evaluate_metrics(label), metrics / f"evaluate@{name}.json")
    aligned = {"enx": ("me5-tiny-enx",), "multiway": ("me5-tiny-multiway",)}
    cfg = ReportConfig(metrics_dir=str(metrics), base="me5-tiny", aligned=aligned,
                         encoders=("me5-tiny", "never-run"))
    heading, note, table = with_settings(results.encoders_section, cfg, LANGS)
    assert heading.text == "Encoders side by side" and "relative change of multiway" in note.text
    assert table.columns[:2] == ("encoder", "model")
    assert "Bitext mining, seen" in table.columns and "All tasks, unseen" in table.columns
    rows = {row[1]: row for row in table.rows}
    col = table.columns.index("Bitext mining, seen")
    # Seen bitext (deu, fra): base 85.0, multiway 90.5 → +6.5 % over base; multiway bare.
    assert rows["base: me5-tiny"][col] == "85.0 (+6.5 %)"
    assert rows["multiway: me5-tiny-multiway"][col] == "90.5"
    assert all(v == "–" for v in rows["base: never-run"][2:])
    assert with_settings(results.encoders_section, ReportConfig(), LANGS) == []


def test_sections_take_settings_not_the_config():
    """The section functions' keyword-only parameters are ReportConfig fields, passed one by one
    (so no section imports the stage module: tests/test_config.py checks for import circles)."""
    fields = {f.name for f in dataclasses.fields(ReportConfig)}
    for path in sorted(Path(report.__file__).parent.glob("*.py")):
        module = importlib.import_module(
            "pipeline.report" + (f".{path.stem}" if path.stem != "__init__" else ""))
        for name, function in inspect.getmembers(module, inspect.isfunction):
            if function.__module__ == module.__name__:
                keywords = {p.name for p in inspect.signature(function).parameters.values()
                            if p.kind is p.KEYWORD_ONLY}
                assert keywords <= fields, (path.name, name, keywords - fields)
