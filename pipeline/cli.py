"""The ``multiway`` command and the shared entry of every DVC stage.

A stage ``<name>`` (= params section = ``stages/<name>.py``) is one module holding its config
class and ``run``, registered in :data:`~pipeline.registry.STAGES` with its shared sections
and matrix keys. ``stages/<name>.py`` hands its module to :func:`run_stage`; ``multiway
<name>`` runs the same :func:`execute`, with one ``--flag`` per config field overriding
``params.yaml``. Stage modules import heavy libraries inside their functions, so
``multiway --help`` answers at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import resource
import subprocess
import sys
import time
import typing
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from pipeline import config as cfgmod
from pipeline.encoders.catalog import model_label
from pipeline.io import metrics_path, write_json
from pipeline.registry import SHARED, STAGES, config_class, stage_module
from pipeline.runtime import run_context, run_entry

logger = logging.getLogger(__name__)


#: Key of the run-dependent part of a run function's metrics (see ``registry.Stage``).
RUNTIME = "runtime"


def _results_root(cls: type, cfg: Any, own: Any) -> Path:
    """Where a run's metrics and runtime go: ``data``, unless the output was moved.

    ``own`` is the section as the project's ``params.yaml`` has it. A run whose output field
    (``output_dir`` or ``output``) differs from it (``multiway translate --output-dir
    /tmp/x``, or ``--params sweep.yaml`` whose section moves the output) writes them next to
    its output (``/tmp/x/metrics/``, ``/tmp/x/runtime/``), never over the tracked
    ``data/metrics/``.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    field = next((f for f in ("output_dir", "output") if f in names), None)
    if field is None or getattr(cfg, field) == getattr(own, field):
        return Path("data")
    out = Path(getattr(cfg, field))
    return out if field == "output_dir" else out.parent


def _usage() -> tuple[float, float]:
    """CPU seconds and peak RSS (MiB) of this process and its finished children."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return (sum(u.ru_utime + u.ru_stime for u in usage),
            max(u.ru_maxrss for u in usage) / 1024)  # ru_maxrss is in KiB on Linux


def _load(section: str, cls: type, params: dict[str, Any], path: str, overrides: dict) -> Any:
    data = dict(params.get(section) or {})
    hints = typing.get_type_hints(cls)
    for key, value in overrides.items():
        # A nested section (train_drmim's drmim:) takes the given keys, keeping the others.
        if (dataclasses.is_dataclass(hints.get(key)) and isinstance(value, dict)
                and isinstance(data.get(key), dict)):
            value = {**data[key], **value}
        data[key] = value
    return cfgmod.from_mapping(cls, data, where=f"{path}:{section}")


def _torchrun(name: str, params_path: str, overrides: dict[str, Any], matrix: dict[str, str],
              processes: int) -> None:
    """Run the stage again under torchrun, one process per GPU (``gpus`` above 1).

    Each process runs :func:`execute` with the same params, overrides and matrix item; the
    main one writes the metrics. A failed process fails the launch with torchrun's status.
    """
    flags = [f"--{key}={value}" for key, value in matrix.items()]
    flags += [f"--{key.replace('_', '-')}={json.dumps(value)}" for key, value in overrides.items()]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={processes}", "-m", "pipeline.cli", name,
           f"--params={params_path}", *flags]
    logger.info("launching %d processes: %s", processes, " ".join(cmd))
    status = subprocess.run(cmd, check=False).returncode
    if status:
        raise SystemExit(status)


def execute(name: str, params_path: str, overrides: dict[str, Any] | None = None,
            matrix: dict[str, str] | None = None) -> dict[str, Any]:
    """Load a stage's config (params file + overrides), run it, write its metrics JSON.

    The run's metrics go to ``data/metrics/<stage>[@<item>].json``; its ``runtime`` part
    (see :class:`~pipeline.registry.Stage`), with the wall and CPU seconds and peak RSS
    measured here and the machine, date and git revision, to
    ``data/runtime/<stage>[@<item>].json``. A run whose output is not where the project's
    ``params.yaml`` puts it (moved by a flag or by another params file) writes both next to
    that output instead.

    Args:
        name: Stage name (a key of :data:`STAGES`).
        params_path: The params file; unknown sections fail. A missing file fails too,
            except the default ``params.yaml`` (then every section takes its defaults).
        overrides: Field → value, applied on top of the params section.
        matrix: Matrix key → value (e.g. ``{"lang": "deu_Latn"}``) for matrix stages.

    A stage whose config asks for several ``gpus`` is relaunched under torchrun (one process
    per GPU), unless this process is already one of torchrun's.

    Returns:
        The metrics the stage returned, without their ``runtime`` part (``None``: nothing
        written here: the non-main processes of a distributed run, or its launcher).
    """
    stage = STAGES[name]
    # Only the default params.yaml may be absent (a run outside a project: all defaults).
    defaults = params_path == "params.yaml" and not Path(params_path).exists()
    params = {} if defaults else cfgmod.load_params(params_path, [*STAGES, *SHARED])
    cls = config_class(name)
    cfg = _load(name, cls, params, params_path, overrides or {})
    kwargs: dict[str, Any] = {
        s: _load(s, config_class(s), params, params_path, {}) for s in stage.shared
    }
    matrix = matrix or {}
    missing = [key for key in stage.matrix if not matrix.get(key)]
    if missing:
        raise ValueError(f"stage {name} needs {' '.join(f'--{key}' for key in missing)}")
    if getattr(cfg, "gpus", 0) > 1 and "LOCAL_RANK" not in os.environ:
        _torchrun(name, params_path, overrides or {}, matrix, cfg.gpus)
        return None
    kwargs.update({key: matrix[key] for key in stage.matrix})
    # A path given from the CLI names its metrics file by its last component, a hub id by
    # org--name.
    item = "-".join(model_label(matrix[key]) for key in stage.matrix) or None
    start, (cpu, _) = time.perf_counter(), _usage()
    metrics = stage_module(name).run(cfg, **kwargs)
    if metrics is None:
        return None
    cpu_end, peak_rss = _usage()
    runtime = {**metrics.pop(RUNTIME, {}), "wall_seconds": round(time.perf_counter() - start, 3),
               "cpu_seconds": round(cpu_end - cpu, 3), "peak_rss_mb": round(peak_rss, 1),
               **run_context()}
    project = Path("params.yaml")
    own = (params if defaults or not project.exists()
           or Path(params_path).resolve() == project.resolve()
           else cfgmod.load_params(str(project), [*STAGES, *SHARED]))
    root = _results_root(cls, cfg, _load(name, cls, own, str(project), {}))
    write_json(metrics, metrics_path(name, item, root))
    write_json(runtime, metrics_path(name, item, root, "runtime"))
    return metrics


def run_stage(module: ModuleType, argv: list[str] | None = None) -> int:
    """Entry of ``stages/<name>.py``: run the stage ``module`` (``--params``, matrix keys).

    Returns:
        Process exit status (2 for a user mistake, reported in one line).
    """
    name = module.__name__.rsplit(".", 1)[-1]
    stage = STAGES[name]
    parser = argparse.ArgumentParser(prog=f"stages/{name}.py", description=stage.help)
    parser.add_argument("--params", default="params.yaml")
    for key in stage.matrix:
        parser.add_argument(f"--{key}", required=True)
    args = parser.parse_args(argv)
    matrix = {key: getattr(args, key) for key in stage.matrix}
    return run_entry(lambda: execute(name, args.params, matrix=matrix))


def build_parser() -> argparse.ArgumentParser:
    """The ``multiway`` argument parser: one subcommand per stage, one flag per field."""
    parser = argparse.ArgumentParser(
        prog="multiway",
        description="multiway-align: multi-way parallel corpora, alignment, evaluation.",
    )
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, stage in STAGES.items():
        cls = config_class(name)
        p = sub.add_parser(name, help=stage.help, description=stage.help)
        p.add_argument("--params", default="params.yaml",
                       help="params file whose section gives defaults (default: %(default)s)")
        for key in stage.matrix:
            p.add_argument(f"--{key}", required=True, help="matrix item")
        hints, docs = typing.get_type_hints(cls), cfgmod.field_docs(cls)
        for field in dataclasses.fields(cls):
            p.add_argument(
                f"--{field.name.replace('_', '-')}", dest=f"set_{field.name}",
                metavar=cfgmod._type_name(hints[field.name]).upper(),
                help=docs.get(field.name, "") + (
                    " (YAML mapping: the keys given replace those of the section)"
                    if dataclasses.is_dataclass(hints[field.name]) else " (YAML value)"),
            )
    p = sub.add_parser("doctor", help="Check what the params need: GPU, hub models, disk.",
                       description="Check the GPU set-up, the hub models and datasets at their "
                                   "pins, and disk space for the current params; one line per "
                                   "problem with its fix, exit status 1 on any.")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--record", help="write this file when every check passes (dvc.yaml's "
                                    "doctor stage: the first stages depend on it)")
    p = sub.add_parser("profile", help="Merge configs/profiles/<name>.yaml into params.yaml.",
                       description="Merge a profile's overrides into params.yaml (e.g. paper).")
    p.add_argument("name", help="profile name, e.g. paper")
    p.add_argument("--params", default="params.yaml")
    return parser


def doctor(params: str, record: str | None = None) -> int:
    """``multiway doctor``: one line per problem on stdout; 1 when there is any."""
    from pipeline.doctor import check

    checked, problems = check(params)
    for line in problems:
        sys.stdout.write(f"{line}\n")
    if problems:
        sys.stdout.write(f"doctor: {len(problems)} problem(s) in {params}\n")
        return 1
    sys.stdout.write(f"doctor: all checks passed ({'; '.join(checked)})\n")
    if record:
        write_json({"passed": True}, record)  # the same on every machine: reruns nothing
    return 0


def main(argv: list[str] | None = None) -> int:
    """``multiway`` console entry point."""
    args = build_parser().parse_args(argv)
    if args.stage == "doctor":
        found: dict[str, int] = {}
        status = run_entry(lambda: found.update(status=doctor(args.params, args.record)))
        return status or found.get("status", 0)
    if args.stage == "profile":
        from pipeline.profiles import apply_profile

        return run_entry(lambda: logger.info(
            "set %s", ", ".join(apply_profile(args.name, args.params))))
    stage = STAGES[args.stage]
    overrides = {
        k[len("set_"):]: yaml.safe_load(v)
        for k, v in vars(args).items()
        if k.startswith("set_") and v is not None
    }
    matrix = {key: getattr(args, key) for key in stage.matrix}
    return run_entry(lambda: execute(args.stage, args.params, overrides, matrix))


if __name__ == "__main__":
    sys.exit(main())
