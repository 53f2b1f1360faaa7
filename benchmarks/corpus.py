"""``build_corpus`` at scale: peak memory and wall time of the streamed build vs the row count.

Synthetic inputs stand in for the pipeline's: an English source table (one row group, as
``prepare_source`` writes it) and one translation file per language (row groups of 1,000
rows, as the translate stage's shards make them), ids in source order. Texts are drawn from
a pool of sentences in each language's script with the row number appended (so every text
is distinct), and about 2 % of the translations are broken in one of the ways the filters
catch (empty, decoder loop, copied source, wrong script, truncated). Each measurement runs
the stage function in a fresh subprocess, so its peak RSS (``getrusage``) is its own.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/corpus.py               # the full table
    .venv/bin/python benchmarks/corpus.py --sizes 10000
    .venv/bin/python benchmarks/corpus.py --worker new --n 10000         # one measurement

``--shuffled-sizes`` also runs the streamed build on translation files in random order (the
external reorder). (The in-memory baseline in docs/benchmarks.md was measured at 548d957, whose
build module no longer imports against today's package.) Languages:
the default pool plus Chinese (``zho_Hans``), seven; no references (no human corpus).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

POOL = ("deu_Latn", "fra_Latn", "spa_Latn", "rus_Cyrl", "arb_Arab", "kor_Hang", "zho_Hans")
# Letters per script and characters per English character (about LENGTH_FACTORS).
ALPHABETS = {
    "Latn": ("abcdefghijklmnopqrstuvwxyzäöüéèàçñ", 1.0),
    "Cyrl": ("абвгдеёжзийклмнопрстуфхцчшщыэюя", 0.85),
    "Arab": ("ابتثجحخدذرزسشصضطظعغفقكلمنهوي", 0.6),
    "Hang": ("".join(chr(0xAC00 + 37 * k) for k in range(300)), 0.45),
    "Hans": ("".join(chr(0x4E00 + 53 * k) for k in range(400)), 0.3),
}
POOL_SENTENCES = 5000


def _words(rng: np.random.Generator, letters: str, count: int) -> np.ndarray:
    chars = np.array(list(letters))
    return np.array(["".join(rng.choice(chars, size=int(rng.integers(2, 9))))
                     for _ in range(count)])


def _sentence_pools(seed: int = 0) -> tuple[list[str], dict[str, list[str]]]:
    """Aligned pools: English sentence k and its 'translation' k in every language."""
    rng = np.random.default_rng(seed)
    english_words = _words(rng, "abcdefghijklmnopqrstuvwxyz", 3000)
    lengths = rng.integers(6, 40, size=POOL_SENTENCES)
    english = [" ".join(rng.choice(english_words, size=int(n))) + "." for n in lengths]
    pools = {}
    for lang in POOL:
        letters, factor = ALPHABETS[lang.split("_")[1]]
        if lang.endswith("Hans"):  # unspaced: characters, no words
            chars = np.array(list(letters))
            pools[lang] = ["".join(rng.choice(chars, size=max(1, round(len(e) * factor))))
                           + "。" for e in english]
            continue
        words = _words(rng, letters, 3000)
        out = []
        for e in english:
            text, want, size = [], len(e) * factor, 0
            for word in rng.choice(words, size=len(e)):  # more than enough words
                if size >= want:
                    break
                text.append(word)
                size += len(word) + 1
            out.append(" ".join(text) + ".")
        pools[lang] = out
    return english, pools


def make_data(n: int, directory: Path, seed: int = 0) -> None:
    """Write ``source.parquet`` and ``translated/<lang>.parquet`` for ``n`` rows (streamed)."""
    if (directory / "done").exists():
        return
    english, pools = _sentence_pools(seed)
    rng = np.random.default_rng(seed + 1)
    (directory / "translated").mkdir(parents=True, exist_ok=True)
    string = pa.large_string()
    src_schema = pa.schema([("id", string), ("eng_Latn", string)])
    src_writer = pq.ParquetWriter(directory / "source.parquet", src_schema)
    src_rows: list[pa.Table] = []
    writers = {lang: pq.ParquetWriter(directory / "translated" / f"{lang}.parquet",
                                      pa.schema([("id", string), (lang, string)]))
               for lang in POOL}
    chunk = 1000  # the translate stage's shard size: one row group each
    for start in range(0, n, chunk):
        rows = range(start, min(n, start + chunk))
        pick = rng.integers(POOL_SENTENCES, size=len(rows))
        ids = [f"r{i:09d}" for i in rows]
        src_texts = [f"{english[k]} {i}" for k, i in zip(pick, rows, strict=True)]
        src_rows.append(pa.table({"id": ids, "eng_Latn": src_texts}, schema=src_schema))
        for lang in POOL:
            texts = [f"{pools[lang][k]} {i}" for k, i in zip(pick, rows, strict=True)]
            for j in np.flatnonzero(rng.random(len(rows)) < 0.02):
                kind = int(rng.integers(5))
                texts[j] = ["", src_texts[j], " ".join([texts[j].split()[0]] * 12),
                            pools["rus_Cyrl" if lang != "rus_Cyrl" else "kor_Hang"][pick[j]],
                            texts[j][:2]][kind]
            writers[lang].write_table(pa.table({"id": ids, lang: texts},
                                               schema=writers[lang].schema))
    # Row groups of up to 1Mi rows, pyarrow's default, as prepare_source writes the table.
    src_writer.write_table(pa.concat_tables(src_rows), row_group_size=1 << 20)
    src_writer.close()
    for writer in writers.values():
        writer.close()
    (directory / "done").touch()


def make_shuffled(aligned: Path, directory: Path, seed: int = 0) -> None:
    """A copy of ``aligned`` whose translation files are in random order (the reorder path)."""
    if (directory / "done").exists():
        return
    (directory / "translated").mkdir(parents=True, exist_ok=True)
    (directory / "source.parquet").write_bytes((aligned / "source.parquet").read_bytes())
    rng = np.random.default_rng(seed)
    for path in sorted((aligned / "translated").glob("*.parquet")):
        table = pq.read_table(path)
        pq.write_table(table.take(rng.permutation(table.num_rows)),
                       directory / "translated" / path.name, row_group_size=1000)
    (directory / "done").touch()


def worker(args: argparse.Namespace) -> dict:
    """One build, in this process."""
    from pipeline.config import LangsConfig
    from pipeline.corpus.build_corpus import BuildCorpusConfig, run

    data = Path(args.data)
    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with tempfile.TemporaryDirectory() as out:
        cfg = BuildCorpusConfig(source=str(data / "source.parquet"),
                                translated_dir=str(data / "translated"), references=None,
                                output_dir=out)
        start, cpu = time.perf_counter(), time.process_time()
        metrics = run(cfg, LangsConfig(pool=POOL))
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        sizes = {p.name: p.stat().st_size for p in Path(out).glob("*.parquet")}
    return {
        "impl": args.worker, "rows": args.n, "langs": len(POOL),
        "rows_out": metrics["rows_out"], "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
        "rows_per_s": round(args.n / wall), "import_rss_mb": round(baseline_rss),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "output_mb": round(sum(sizes.values()) / 2**20, 1),
    }


def measure(impl: str, n: int, args: argparse.Namespace, shuffled: bool = False) -> dict:
    """Make the data if needed, then one build in a fresh subprocess."""
    data = Path(args.data_dir) / f"n{n}"
    make_data(n, data)
    if shuffled:
        make_shuffled(data, data.with_name(f"n{n}-shuffled"))
        data = data.with_name(f"n{n}-shuffled")
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    cmd = [sys.executable, __file__, "--worker", impl, "--n", str(n), "--data", str(data)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return {**json.loads(out.strip().splitlines()[-1]), "translations":
            "shuffled" if shuffled else "source order"}


def _cpu() -> dict:
    model = ""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines()
                      if ln.startswith("Model name")), "")
    except (OSError, subprocess.CalledProcessError):
        pass
    flags = set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    return {"model": model or platform.processor() or platform.machine(),
            "avx512f": "avx512f" in flags, "avx2": "avx2" in flags,
            "cpus_visible": os.cpu_count()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=["new"], help="run one build here")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--data", help="(worker) data directory")
    parser.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "bench_corpus"),
                        help="where the synthetic inputs are made (kept for reruns)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--shuffled-sizes", type=int, nargs="*", default=[100_000],
                        help="also run the streamed build on translation files in random order")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "corpus.json"))
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    machine = {**_cpu(), "platform": platform.platform(),
               "load_average": round(os.getloadavg()[0], 2)}
    print(f"machine: {machine}")
    print("| build | translations | rows × langs | wall (s) | CPU (s) | rows/s | peak RSS (MB) "
          "| after imports (MB) |")
    print("|---|---|---|---|---|---|---|---|")
    results = []
    for impl, sizes, shuffled in (("new", args.sizes, False),
                                  ("new", args.shuffled_sizes, True)):
        for n in sizes:
            r = measure(impl, n, args, shuffled)
            results.append(r)
            print(f"| {impl} | {r['translations']} | {n:,} × {r['langs']} | {r['wall_s']} | "
                  f"{r['cpu_s']} | {r['rows_per_s']:,} | {r['peak_rss_mb']} | "
                  f"{r['import_rss_mb']} |", flush=True)
    new = {r["rows"]: r["peak_rss_mb"] for r in results
           if r["impl"] == "new" and r["translations"] == "source order"}
    ratio = round(new[max(new)] / new[min(new)], 2) if new else None
    print(f"peak RSS ratio, {max(new):,} vs {min(new):,} rows: {ratio}")
    Path(args.output).write_text(json.dumps({
        "machine": machine, "langs": list(POOL),
        "results": results, "peak_rss_ratio_largest_vs_smallest": ratio,
    }, indent=2) + "\n")


if __name__ == "__main__":
    main()
