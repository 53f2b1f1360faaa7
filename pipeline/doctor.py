"""``multiway doctor``: check, before hours of compute, what the current params need.

One line per problem, each with its fix:

- **GPU**: torch sees as many GPUs as ``train_encoder.gpus`` (or one, where any stage says
  ``device: cuda``); where translation runs on the GPU, CTranslate2 sees it, loads cuBLAS 12
  and offers a 16-bit compute type (:mod:`pipeline.translate.cuda`).
- **Hub**: every hub model of the profile (encoders of ``import_encoder``, NMT models of
  ``convert_nmt``) at its pinned revision, and every hub dataset (the English source, the mteb
  tasks of the evaluation suite, the downstream tasks), in the local HF cache or reachable
  (``HF_HUB_OFFLINE=1``: the cache only).
- **Disk**: free space for one run's checkpoints and every saved model, where the sizes of
  the weights are known (a cached or local model), plus a margin.
- **Training settings** that would waste GPU time or lose the dev loss
  (:func:`pipeline.train.train_encoder.config_problems`, which ``train_encoder`` enforces too).

``dvc repro`` runs it as its first stage (``doctor``): the stages that reach the hub or the GPU
first (``prepare_source``, ``convert_nmt``, ``import_encoder``) depend on its record, which
holds nothing but success, so a passing check never reruns them.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

from pipeline.config import LangsConfig, from_mapping, load_params
from pipeline.downstream.train_drmim import TrainDrmimConfig
from pipeline.encoders.import_encoder import ImportEncoderConfig
from pipeline.evaluation.evaluate import EvaluateConfig
from pipeline.registry import config_class
from pipeline.sources.prepare_source import PrepareSourceConfig
from pipeline.train.train_encoder import TrainEncoderConfig
from pipeline.translate.convert_nmt import ConvertNmtConfig
from pipeline.translate.translate import TranslateConfig

logger = logging.getLogger(__name__)

#: Free space wanted beyond the estimate (logs, corpora, mteb results, DVC's cache copies).
MARGIN_GB = 5.0
GB = 1e9
#: Optimiser state of AdamW (two moments) plus the weights: a checkpoint's size over the model's.
CHECKPOINT_FACTOR = 3


@dataclasses.dataclass(frozen=True)
class Sections:
    """The params sections the checks read (defaults where a section is absent)."""

    langs: LangsConfig
    prepare_source: PrepareSourceConfig
    convert_nmt: ConvertNmtConfig
    translate: TranslateConfig
    import_encoder: ImportEncoderConfig
    train_encoder: TrainEncoderConfig
    evaluate: EvaluateConfig
    train_drmim: TrainDrmimConfig


def load_sections(params_path: str | Path) -> Sections:
    """Read the sections of ``params_path`` that :func:`check` needs."""
    params = load_params(params_path)
    return Sections(**{
        f.name: from_mapping(config_class(f.name), params.get(f.name), f"{params_path}:{f.name}")
        for f in dataclasses.fields(Sections)
    })


def gpus_needed(s: Sections) -> int:
    """GPUs the params ask for: ``train_encoder.gpus``, or 1 where any stage says ``cuda``."""
    devices = (s.translate.device, s.train_encoder.device, s.evaluate.device, s.train_drmim.device)
    return max(s.train_encoder.gpus, 1 if "cuda" in devices else 0)


def check_gpus(s: Sections) -> list[str]:
    """Problems of the GPU set-up (none when the params need no GPU)."""
    needed = gpus_needed(s)
    if not needed:
        return []
    import torch

    problems = []
    seen = torch.cuda.device_count()
    if seen < needed:
        problems.append(
            f"gpu: torch sees {seen} GPU(s), the params need {needed} (train_encoder.gpus): "
            "check `nvidia-smi`, and that the environment has a CUDA build of torch "
            "(`python -c 'import torch; print(torch.version.cuda)'` prints a version)"
        )
    if s.langs.pool and s.translate.device != "cpu":
        problems += _check_ctranslate2(s.translate.compute_type)
    return problems


def _check_ctranslate2(compute_type: str) -> list[str]:
    from pipeline.translate.cuda import CUBLAS12_FIX, import_ctranslate2, load_cublas12

    ct2 = import_ctranslate2()
    if ct2.get_cuda_device_count() == 0:
        return ["gpu: CTranslate2 sees no GPU, so translation would run on the CPU: install a "
                "ctranslate2 wheel with CUDA support (the PyPI wheel for Linux x86-64 has it), "
                "or set translate.device: cpu"]
    if problem := load_cublas12():
        return [f"gpu: CTranslate2 needs cuBLAS 12, which does not load ({problem}): "
                f"{CUBLAS12_FIX}"]
    supported = ct2.get_supported_compute_types("cuda")
    wanted = {"auto": ("bfloat16", "float16", "int8_float16"), "default": ()}.get(
        compute_type, (compute_type,))
    if wanted and not set(wanted) & supported:
        return [f"gpu: CTranslate2 offers {', '.join(sorted(supported))} on this GPU, not "
                f"translate.compute_type {compute_type}: set it to one of those"]
    return []


def hub_models(s: Sections) -> list[tuple[str, str, str | None]]:
    """``(what, hub id, revision)`` of every hub model the params load."""
    from pipeline.encoders.catalog import get_spec, load_catalogue
    from pipeline.translate.convert_nmt import load_catalog, resolve_model

    specs = load_catalogue(s.import_encoder.catalogue)
    models = [(f"encoder {key}", spec.source, spec.revision)
              for key in s.import_encoder.encoders
              if (spec := get_spec(key, specs)).is_hub]
    nmt = load_catalog()
    for key in s.convert_nmt.models:
        _, source, entry = resolve_model(key, nmt)
        if not Path(source).is_dir():
            models.append((f"NMT model {key}", source, entry.revision if entry else None))
    return models


def hub_datasets(s: Sections) -> list[tuple[str, str, str | None]]:
    """``(what, hub id, revision)`` of every hub dataset the params read."""
    from pipeline.downstream.data import HUB_IDS

    found = []
    if s.prepare_source.format == "hf" and not Path(s.prepare_source.input).is_dir():
        found.append(("source text", s.prepare_source.input, None))
    if not s.train_drmim.dataset:
        found += [(f"downstream task {t}", HUB_IDS[t], None)
                  for t in s.train_drmim.tasks if t in HUB_IDS]
    if s.evaluate.models:
        from pipeline.evaluation.suites import get_suite
        from pipeline.evaluation.tasks import PROJECT_TASKS

        hub_tasks = [name for name in get_suite(s.evaluate.suite, s.evaluate.suites_file).tasks
                     if name not in PROJECT_TASKS]
        if hub_tasks:
            import mteb

            for name in hub_tasks:
                data = mteb.get_task(name).metadata.dataset
                found.append((f"mteb task {name}", data["path"], data.get("revision")))
    return found


def _model_cached(hub_id: str, revision: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(hub_id, "config.json", revision=revision), str)


def _datasets_cache() -> Path:
    """Where ``datasets`` keeps prepared copies (``<org>___<name>/``), which it reads offline."""
    import datasets

    return Path(datasets.config.HF_DATASETS_CACHE)


def _reachable(hub_id: str, revision: str | None, repo_type: str) -> str | None:
    """``None`` when the hub answers for the repository at ``revision``, else why not."""
    from huggingface_hub import HfApi

    try:
        HfApi().repo_info(hub_id, revision=revision, repo_type=repo_type, timeout=10)
    except Exception as exc:  # offline, unknown id or revision, gated: all mean "not here"
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return None


def check_hub(s: Sections) -> list[str]:
    """Problems of the hub models and datasets: neither cached nor reachable."""
    from huggingface_hub import constants

    from pipeline.encoders.hub import download_command

    offline = constants.HF_HUB_OFFLINE
    cache = _datasets_cache()
    wanted = [("model", m, _model_cached(m[1], m[2])) for m in hub_models(s)]
    wanted += [("dataset", d, (cache / d[1].replace("/", "___")).is_dir())
               for d in hub_datasets(s)]
    problems = []
    for kind, (what, hub_id, revision), cached in wanted:
        why = None if cached else (
            "HF_HUB_OFFLINE=1" if offline else _reachable(hub_id, revision, kind))
        if why and kind == "model":
            pin = f" at its pinned revision {revision}" if revision else ""
            problems.append(f"hub: {what} ({hub_id}{pin}) is not in the HF cache and cannot be "
                            f"downloaded ({why}): `{download_command(hub_id, revision)}` where "
                            "the hub is reachable, then copy the HF cache here")
        elif why:
            pin = f" at revision {revision}" if revision else ""
            problems.append(f"hub: {what} (dataset {hub_id}{pin}) is not in the datasets cache "
                            f"{cache} and cannot be downloaded ({why}): run the pipeline once "
                            "where the hub is reachable (its stages fill the cache), or copy a "
                            "cache that holds it there")
    return problems


def _weights_bytes(hub_id: str, revision: str | None) -> int:
    """Size of a cached model's largest weights file (0: not cached, size unknown)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(hub_id, "config.json", revision=revision)
    if not isinstance(found, str):
        return 0
    files = [p for p in Path(found).parent.iterdir() if p.suffix in (".safetensors", ".bin")]
    return max((p.stat().st_size for p in files), default=0)


def check_disk(s: Sections, root: str | Path = ".") -> list[str]:
    """A problem when free space is below one run's checkpoints, every saved model and a margin."""
    t = s.train_encoder
    sizes = [_weights_bytes(hub_id, rev) for what, hub_id, rev in hub_models(s)
             if what.startswith("encoder")]
    largest = max(sizes, default=0)
    runs = len(t.encoders) * len(t.regimes) * len(t.seeds)
    checkpoints = CHECKPOINT_FACTOR * max(t.save_total_limit, 1) * largest
    need = checkpoints + (runs + len(sizes)) * largest + MARGIN_GB * GB
    free = shutil.disk_usage(Path(root).resolve()).free
    if free >= need:
        return []
    return [f"disk: {free / GB:.1f} GB free here, the params need about {need / GB:.1f} GB "
            f"({runs} trained models and one run's checkpoints of {largest / GB:.2f} GB "
            f"weights, plus {MARGIN_GB:.0f} GB): free space, or point train_encoder.output_dir "
            "and work_dir at a larger disk"]


def check_config(s: Sections) -> list[str]:
    """Training settings that would waste GPU time or lose the dev loss (as train_encoder)."""
    from pipeline.train.train_encoder import config_problems

    return config_problems(s.train_encoder, s.train_encoder.regimes)


def check(params_path: str | Path = "params.yaml") -> tuple[list[str], list[str]]:
    """Run every check on the params of ``params_path``.

    Returns:
        ``(checked, problems)``: what was checked, and one line per problem with its fix.

    Raises:
        ValueError, FileNotFoundError: The params (or a catalogue they name) are invalid.
    """
    s = load_sections(params_path)
    checked = [f"{gpus_needed(s)} GPU(s) needed"]
    checked += [f"{what}: {hub_id}@{rev or 'main'}" for what, hub_id, rev in hub_models(s)]
    checked += [f"{what}: {hub_id}" for what, hub_id, _ in hub_datasets(s)]
    problems = check_config(s) + check_gpus(s) + check_hub(s) + check_disk(s)
    logger.info("doctor: %d check(s), %d problem(s)", len(checked) + 1, len(problems))
    return checked, problems
