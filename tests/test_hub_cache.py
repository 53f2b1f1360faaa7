"""The offline hub cache of tests/fixtures/hub.py loads through the real loaders.

huggingface_hub, datasets and transformers read ``HF_*`` at import time, so every check
runs in a fresh interpreter with the fixture's environment (as ``dvc repro`` stages would).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.fixtures.hub import (
    DATASET_REVISIONS,
    E5_ID,
    MBERT_ID,
    MODEL_REVISIONS,
    NLLB_ID,
    NLLB_REVISION,
    STS17_ID,
    STS17_SUBSETS,
    TATOEBA_ID,
    TATOEBA_SUBSETS,
    XLMR_ID,
    sentence,
)
from tests.fixtures.hub import hub_env as hub_fixtures_env

ROOT = Path(__file__).resolve().parents[1]
POOL = ["eng_Latn", "deu_Latn", "fra_Latn", "spa_Latn", "rus_Cyrl", "arb_Arab", "kor_Hang"]
# evaluate.unseen of params.yaml: the evaluate stage resolves hub tasks with POOL + these.
UNSEEN = ["ita_Latn", "por_Latn", "pes_Arab", "vie_Latn", "tgl_Latn", "zho_Hans", "jpn_Jpan",
          "hin_Deva", "ben_Beng", "tur_Latn", "ron_Latn", "pol_Latn", "ind_Latn", "ukr_Cyrl",
          "swh_Latn"]


def run_offline(env: dict[str, str], code: str, tmp_path: Path | None = None) -> dict:
    """Run ``code`` in a new interpreter (repository root as cwd) with the cache's env.

    The script prints one JSON object as its last stdout line; that object is returned.
    """
    full_env = {**os.environ, **env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                "TOKENIZERS_PARALLELISM": "false", "TMPDIR": str(tmp_path or "/tmp")}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                          env=full_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-6000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


# Appended to a script that defines ``attempts`` (name -> a call without arguments): prints,
# per name, the class name of the exception the call raised, or None where it returned.
_PRINT_ATTEMPT_ERRORS = """
import json

errors = {}
for name, attempt in attempts.items():
    try:
        attempt()
        errors[name] = None
    except Exception as exc:
        errors[name] = type(exc).__name__
print(json.dumps(errors))
"""


def attempt_errors_offline(env: dict[str, str], code: str, tmp_path: Path | None = None) -> dict:
    """:func:`run_offline` of ``code``, which defines ``attempts``: what each attempt raised."""
    return run_offline(env, textwrap.dedent(code) + _PRINT_ATTEMPT_ERRORS, tmp_path)


def test_env_and_layout(hub_cache):
    root, env = hub_cache
    assert env["HF_HUB_OFFLINE"] == env["HF_DATASETS_OFFLINE"] == env["TRANSFORMERS_OFFLINE"] == "1"
    hub = Path(env["HF_HUB_CACHE"])
    assert Path(env["HF_HOME"]).is_dir() and hub.is_relative_to(root)
    for repo_id, revision in MODEL_REVISIONS.items():
        repo = hub / f"models--{repo_id.replace('/', '--')}"
        assert (repo / "refs" / "main").read_text() == revision
        config = repo / "snapshots" / revision / "config.json"
        assert config.is_symlink() and config.resolve().parent == (repo / "blobs").resolve()
    datasets_dir = Path(env["HF_DATASETS_CACHE"])
    assert (datasets_dir / "facebook___xnli" / "de" / "0.0.0" / DATASET_REVISIONS["facebook/xnli"]
            / "dataset_info.json").is_file()


def test_encoders_load_offline(hub_cache, tmp_path):
    _, env = hub_cache
    out = run_offline(env, f"""
        import json
        from huggingface_hub import snapshot_download
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer.modules import Transformer
        from transformers import AutoModel, AutoTokenizer
        from pipeline.encoders.catalog import load_encoder

        revisions = {json.dumps({k: v for k, v in MODEL_REVISIONS.items() if k != NLLB_ID})}
        text = {sentence("de", 5)!r}
        out = {{}}
        for repo_id, rev in revisions.items():
            res = out[repo_id] = {{}}
            for kw in ({{}}, {{"revision": rev}}):
                model = AutoModel.from_pretrained(repo_id, **kw)
                tok = AutoTokenizer.from_pretrained(repo_id, **kw)
                res.setdefault("classes", []).append([type(model).__name__, type(tok).__name__])
                res.setdefault("hidden", []).append(model(**tok(text, return_tensors="pt"))
                                                    .last_hidden_state.shape[-1])
            res["snapshot"] = snapshot_download(repo_id).endswith(rev)
            res["st"] = [SentenceTransformer(repo_id).encode([text]).shape[1],
                         SentenceTransformer(repo_id, revision=rev).encode([text]).shape[1]]
            pinned = Transformer(repo_id, max_seq_length=512,
                                 model_kwargs={{"revision": rev}},
                                 processor_kwargs={{"revision": rev}},
                                 config_kwargs={{"revision": rev}})
            res["pinned_dim"] = pinned.get_embedding_dimension()
        for key in ("xlmr-base", "mbert-base", "me5-base"):
            enc = load_encoder(key)
            out[key] = [len(enc), enc.encode([text]).shape[1], enc.max_seq_length]
        print(json.dumps(out))
    """, tmp_path)
    assert out[XLMR_ID]["classes"] == [["XLMRobertaModel", "XLMRobertaTokenizer"]] * 2
    assert out[E5_ID]["classes"] == [["XLMRobertaModel", "XLMRobertaTokenizer"]] * 2
    assert out[MBERT_ID]["classes"] == [["BertModel", "BertTokenizer"]] * 2
    for repo_id in (XLMR_ID, MBERT_ID, E5_ID):
        assert out[repo_id]["hidden"] == [32, 32]
        assert out[repo_id]["st"] == [32, 32]
        assert out[repo_id]["snapshot"] and out[repo_id]["pinned_dim"] == 32
    # The project's build_encoder: Transformer + Pooling (+ Normalize for E5).
    assert out["xlmr-base"] == [2, 32, 512] and out["mbert-base"] == [2, 32, 512]
    assert out["me5-base"] == [3, 32, 512]


def test_missing_models_fail_offline(hub_cache, tmp_path):
    _, env = hub_cache
    out = attempt_errors_offline(env, f"""
        from sentence_transformers import SentenceTransformer
        from transformers import AutoModel
        from pipeline.encoders.catalog import load_encoder
        from pipeline.translate.convert_nmt import fetch_model

        attempts = {{
            "absent_id": lambda: AutoModel.from_pretrained("FacebookAI/xlm-roberta-large"),
            "absent_revision": lambda: AutoModel.from_pretrained({XLMR_ID!r}, revision="0" * 40),
            "st_absent_id": lambda: SentenceTransformer("intfloat/multilingual-e5-large"),
            "catalogue_absent": lambda: load_encoder("me5-small"),
            "convert_absent": lambda: fetch_model("facebook/nllb-200-1.3B"),
        }}
    """, tmp_path)
    assert out["absent_id"] == "OSError" and out["absent_revision"] == "OSError"
    assert out["st_absent_id"] is not None
    assert out["catalogue_absent"] == "FileNotFoundError"
    assert out["convert_absent"] == "FileNotFoundError"


def test_nllb_converts_offline(hub_cache, tmp_path):
    _, env = hub_cache
    out = run_offline(env, f"""
        import json
        import ctranslate2
        from transformers import AutoTokenizer
        from pipeline.translate.convert_nmt import ConvertNmtConfig, run

        tok = AutoTokenizer.from_pretrained({NLLB_ID!r}, revision={NLLB_REVISION!r})
        metrics = run(ConvertNmtConfig(output_dir={str(tmp_path / "nmt")!r}),
                      "nllb-200-distilled-600M")
        ct2 = {str(tmp_path / "nmt" / "nllb-200-distilled-600M")!r}
        translator = ctranslate2.Translator(ct2, device="cpu", inter_threads=1, intra_threads=1)
        src = tok.convert_ids_to_tokens(tok("The teacher reads a red book.").input_ids)
        hyp = translator.translate_batch([src], target_prefix=[["fra_Latn"]],
                                         max_decoding_length=6)[0].hypotheses[0]
        meta = json.load(open(ct2 + "/multiway_nmt.json"))
        print(json.dumps({{"metrics": metrics, "meta": meta, "hyp": hyp,
                           "tokenizer": type(tok).__name__}}))
    """, tmp_path)
    assert out["metrics"]["converted"] == 1
    assert out["meta"]["family"] == "nllb"
    assert out["meta"]["source_model"] == NLLB_ID
    assert out["hyp"][0] == "fra_Latn"
    assert out["tokenizer"].startswith("Nllb")


def test_datasets_load_offline(hub_cache, tmp_path):
    _, env = hub_cache
    out = run_offline(env, f"""
        import json
        import datasets
        from pipeline.downstream.train_drmim import TrainDrmimConfig
        from pipeline.sources.prepare_source import PrepareSourceConfig
        from pipeline.downstream.data import load_pawsx, load_tydiqa, load_xnli
        from pipeline.sources.prepare_source import read_rows

        out = {{}}
        talks = datasets.load_dataset("sentence-transformers/parallel-sentences-talks", "en-de",
                                      split="train")
        out["talks"] = [talks.column_names, len(talks), talks[0]]
        for lang in ("en", "de", "fr", "es", "ru", "ar"):
            for split in ("train", "test") if lang == "en" else ("test",):
                ds = datasets.load_dataset("facebook/xnli", lang, split=split)
                out[f"xnli/{{lang}}/{{split}}"] = [ds.column_names, len(ds), ds["label"][:6]]
        for lang in ("en", "de", "es", "fr", "ja", "ko", "zh"):
            ds = datasets.load_dataset("google-research-datasets/paws-x", lang, split="test")
            out[f"pawsx/{{lang}}"] = [ds.column_names, len(ds), ds[0]["id"]]
        for split in ("train", "validation"):
            ds = datasets.load_dataset("google-research-datasets/tydiqa", "secondary_task",
                                       split=split)
            rows = ds.to_list()
            out[f"tydiqa/{{split}}"] = [
                ds.column_names, sorted({{r["id"].split("-")[0] for r in rows}}),
                all(r["context"][s:s + len(t)] == t for r in rows
                    for t, s in zip(r["answers"]["text"], r["answers"]["answer_start"]))]
        # The project's readers.
        rows, n = read_rows(PrepareSourceConfig(
            input="sentence-transformers/parallel-sentences-talks", format="hf",
            column="english", id_column=None, hf_config="en-de"))
        out["prepare_source"] = [n, next(iter(rows))]
        cfg = TrainDrmimConfig(languages={tuple(POOL)!r}, max_train_examples=30,
                               max_test_examples=12, dev_examples=9)
        for load in (load_xnli, load_pawsx, load_tydiqa):
            task = load(dataset=cfg.dataset, languages=cfg.languages, data_seed=cfg.data_seed,
                        max_train_examples=cfg.max_train_examples,
                        max_test_examples=cfg.max_test_examples, dev_examples=cfg.dev_examples)
            out[task.name] = [len(task.train), {{k: len(v) for k, v in task.test.items()}},
                              task.test["eng_Latn"].labels, len(task.dev)]
            out[task.name].append(not set(task.dev.inputs) & set(task.train.inputs))
            if task.kind == "pair":
                en, de = task.test["eng_Latn"].inputs, task.test.get("deu_Latn")
                out[task.name].append(de is not None and de.labels == task.test["eng_Latn"].labels)
                out[task.name].append(sorted(task.dev.labels))
        print(json.dumps(out, ensure_ascii=False, default=str))
    """, tmp_path)
    assert out["talks"][:2] == [["english", "non_english"], 300]
    assert out["talks"][2] == {"english": sentence("en", 0), "non_english": sentence("de", 0)}
    assert out["xnli/en/train"][:2] == [["premise", "hypothesis", "label"], 60]
    for lang in ("en", "de", "fr", "es", "ru", "ar"):
        assert out[f"xnli/{lang}/test"][1:] == [40, [1, 2, 0, 1, 2, 0]]  # row-aligned labels
    for lang in ("en", "de", "es", "fr", "ja", "ko", "zh"):
        assert out[f"pawsx/{lang}"][:2] == [["id", "sentence1", "sentence2", "label"], 40]
    assert out["pawsx/en"][2] == 1 and out["pawsx/de"][2] == 40  # aligned by id, not order
    assert out["tydiqa/train"] == [["id", "title", "context", "question", "answers"],
                                   ["arabic", "english"], True]
    assert out["tydiqa/validation"][1:] == [["arabic", "english", "korean", "russian"], True]
    assert out["prepare_source"] == [300, [0, sentence("en", 0), None]]
    langs6 = {"eng_Latn", "deu_Latn", "fra_Latn", "spa_Latn", "rus_Cyrl", "arb_Arab"}
    xnli_train, xnli_test = out["xnli"][:2]
    cross = {f"eng_Latn-{c}" for c in langs6 - {"eng_Latn"}}
    assert xnli_train == 30 and set(xnli_test) == langs6 | cross
    assert set(xnli_test.values()) == {12}
    assert out["xnli"][5] is True and out["pawsx"][5] is True
    # English dev splits, none of them trained on: XNLI's and PAWS-X's from their English
    # validation split (stratified by label), TyDiQA's from English training questions.
    assert out["xnli"][3] == out["pawsx"][3] == out["tydiqa"][3] == 9
    assert out["xnli"][4] is out["pawsx"][4] is out["tydiqa"][4] is True
    assert out["xnli"][6] == [0, 0, 0, 1, 1, 1, 2, 2, 2] and out["pawsx"][6].count(1) in (4, 5)
    assert set(out["pawsx"][1]) == {"eng_Latn", "deu_Latn", "fra_Latn", "spa_Latn", "kor_Hang",
                                    "eng_Latn-deu_Latn", "eng_Latn-fra_Latn",
                                    "eng_Latn-spa_Latn", "eng_Latn-kor_Hang"}
    assert out["tydiqa"][0] == 30
    assert out["tydiqa"][1] == {"eng_Latn": 12, "arb_Arab": 12, "rus_Cyrl": 12, "kor_Hang": 12}


def test_missing_datasets_fail_offline(hub_cache, tmp_path):
    _, env = hub_cache
    out = attempt_errors_offline(env, """
        import datasets
        from pipeline.downstream.data import load_rows

        attempts = {
            "absent_id": lambda: datasets.load_dataset("facebook/anli", split="test"),
            "absent_config": lambda: datasets.load_dataset("facebook/xnli", "bg", split="test"),
            "absent_split": lambda: datasets.load_dataset("facebook/xnli", "de", split="train"),
            "project_absent_id": lambda: load_rows("facebook/anli", "plain_text", "test"),
        }
    """, tmp_path)
    assert out == {"absent_id": "ConnectionError", "absent_config": "ValueError",
                   "absent_split": "ValueError", "project_absent_id": "FileNotFoundError"}


def test_mteb_paper_tasks_offline(hub_cache, tmp_path):
    _, env = hub_cache
    out = run_offline(env, f"""
        import json
        from pipeline.encoders.catalog import load_encoder
        from pipeline.evaluation.evaluate import evaluate, flatten
        from pipeline.evaluation.suites import Suite, get_suite, resolve_tasks

        paper = get_suite("paper")
        suite = Suite("paper", "", {{k: paper.tasks[k] for k in ("Tatoeba", "STS17")}})
        tasks = resolve_tasks(suite, {POOL + UNSEEN!r})
        revisions = {{t.metadata.name: t.metadata.dataset for t in tasks}}
        results, _ = evaluate(load_encoder("xlmr-base"), tasks, {str(tmp_path / "eval")!r},
                              "xlmr-tiny", batch_size=16)
        metrics = flatten(results, {POOL!r})
        print(json.dumps({{"revisions": revisions, "metrics": metrics}}))
    """, tmp_path)
    # The prepared caches sit under the revisions mteb pins (load_dataset ignores them offline).
    for task, path in (("Tatoeba", TATOEBA_ID), ("STS17", STS17_ID)):
        assert out["revisions"][task] == {"path": path, "revision": DATASET_REVISIONS[path]}
    metrics = out["metrics"]
    groups = {"mean", "seen", "unseen"}

    def subsets(task: str) -> set[str]:
        return {k.split("/")[1] for k in metrics
                if k.startswith(f"{task}/") and k.count("/") == 1} - groups

    assert subsets("Tatoeba") == set(TATOEBA_SUBSETS)
    # Every STS17 subset but nl-en: Dutch is not among the evaluated languages.
    assert subsets("STS17") == set(STS17_SUBSETS) - {"nl-en"}
    assert all(0.0 <= metrics[f"Tatoeba/{s}"] <= 1.0 for s in TATOEBA_SUBSETS)
    assert all(-1.0 <= metrics[f"STS17/{s}"] <= 1.0 for s in STS17_SUBSETS if s != "nl-en")
    assert (tmp_path / "eval" / "results").is_dir()


# ------------------------------------------------- a hub id given directly to the CLI


def _cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """``multiway <args>`` in a fresh interpreter with ``env``, from ``cwd``."""
    full_env = {**os.environ, **env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=300, check=False)


def _ok(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}"


def test_hub_id_works_for_evaluate_mine_and_train_drmim(hub_cache, tmp_path):
    _, env = hub_cache
    catalogue = str(ROOT / "configs/encoders.yaml")
    (tmp_path / "suite.yaml").write_text("paper:\n  tasks:\n    Tatoeba:\n")
    _ok(_cli(env, tmp_path, "evaluate", "--model", XLMR_ID, "--suite", "paper",
             "--suites-file", "suite.yaml", "--catalogue", catalogue, "--output-dir", "eval",
             "--seen", "[eng_Latn, deu_Latn]", "--unseen", "[]", "--threads", "1",
             "--mining-sentences", "0", "--debian-sentences", "0", "--trunk-layers", "0"))
    # A hub id names its outputs org--name: two organisations' models of one name keep apart.
    label = "FacebookAI--xlm-roberta-base"
    meta = json.loads((tmp_path / f"eval/results/multiway-align__{label}/meta.json").read_text())
    # Without the Bible test split, verse mining is refused before any work, in one line.
    done = _cli(env, tmp_path, "evaluate", "--model", XLMR_ID, "--suite", "paper",
                "--suites-file", "suite.yaml", "--catalogue", catalogue, "--output-dir", "eval2",
                "--trunk-layers", "0")
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1] == (
        "error: data/seed/bible_test.parquet does not exist: verse mining needs the Bible test "
        "split; run `dvc repro prepare_seed` first, or turn it off with "
        "evaluate.mining_sentences: 0 (--mining-sentences 0)")
    assert not (tmp_path / "eval2").exists()
    assert meta["model"]["source"] == XLMR_ID
    assert meta["model"]["commit"] == MODEL_REVISIONS[XLMR_ID]
    # An ad-hoc run (its output moved) writes its metrics next to that output.
    scores = json.loads((tmp_path / f"eval/metrics/evaluate@{label}.json").read_text())
    assert "Tatoeba/deu-eng" in scores

    de = [sentence("de", i) for i in range(40)]
    en = [sentence("en", i) for i in range(40)]
    (tmp_path / "de.txt").write_text("\n".join(de) + "\n")
    (tmp_path / "en.txt").write_text("\n".join(en) + "\n")
    _ok(_cli(env, tmp_path, "mine", "--source", "de.txt", "--target", "en.txt",
             "--model", E5_ID, "--catalogue", catalogue, "--output", "pairs.parquet",
             "--threshold", "null", "--threads", "1"))
    import pandas as pd

    pairs = pd.read_parquet(tmp_path / "pairs.parquet")
    assert len(pairs) > 0 and set(pairs.src) <= set(de)

    _ok(_cli(env, tmp_path, "train_drmim", "--task", "xnli", "--encoder", MBERT_ID,
             "--catalogue", catalogue, "--methods", "[finetune]", "--seeds", "[0]",
             "--languages", "[deu_Latn]", "--max-train-examples", "16",
             "--max-test-examples", "8", "--max-length", "32", "--doc-stride", "4",
             "--trainable-layers", "1", "--trunk-layers", "0", "--epochs", "1", "--batch-size", "8",
             "--figure-examples", "0", "--threads", "1", "--output-dir", "runs",
             "--work-dir", "work"))
    predictions = pd.read_parquet(
        tmp_path / "runs/xnli/google-bert--bert-base-multilingual-cased/predictions.parquet")
    assert {"eng_Latn", "deu_Latn", "eng_Latn-deu_Latn"} <= set(predictions.subset)


def test_hub_id_missing_from_the_cache_fails_in_one_line(tmp_path):
    empty = hub_fixtures_env(tmp_path / "empty")
    catalogue = str(ROOT / "configs/encoders.yaml")
    (tmp_path / "a.txt").write_text("Hallo Welt\n")
    runs = {
        "evaluate": ("evaluate", "--model", XLMR_ID, "--catalogue", catalogue, "--suite", "paper",
                     "--suites-file", str(ROOT / "configs/mteb.yaml"), "--trunk-layers", "0"),
        "mine": ("mine", "--source", "a.txt", "--target", "a.txt", "--model", XLMR_ID,
                 "--catalogue", catalogue),
        "train_drmim": ("train_drmim", "--task", "xnli", "--encoder", XLMR_ID,
                        "--catalogue", catalogue, "--trunk-layers", "0"),
    }
    for name, args in runs.items():
        done = _cli(empty, tmp_path, *args)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and "Traceback" not in done.stderr, (name, done.stderr)
        assert lines[-1].startswith("error: ") and XLMR_ID in lines[-1], (name, lines[-1])
        assert f"hf download {XLMR_ID}" in lines[-1], (name, lines[-1])
