"""The training section: the NMT model's run and curve, one row and curve per alignment run."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.report import collect, figures
from pipeline.report.common import RUNTIME_NOTE, fmt_int, fmt_num, not_run
from pipeline.report.render import Block, Figure, Heading, Paragraph, Table


def _arrow(metrics: Mapping[str, Any], first: str, last: str) -> str:
    return f"{fmt_num(metrics.get(first), 3)} → {fmt_num(metrics.get(last), 3)}"


def training_section(fig_dir: Path, *, metrics_dir: str, nmt_log: str, plots_dir: str,
                     aligned: Mapping[str, tuple[str, ...]]) -> list[Block]:
    """NMT training summary and curve; one row and one curve per encoder alignment run.

    Args:
        fig_dir: Where the figure goes.
        metrics_dir: ``report.metrics_dir``, the flat stage metrics.
        nmt_log: ``report.nmt_log``, the NMT training log.
        plots_dir: ``report.plots_dir``, the encoder training logs.
        aligned: ``report.aligned``, regime → its models.
    """
    blocks: list[Block] = [Heading("Training")]
    nmt_path = collect.metrics_file(metrics_dir, "train_nmt")
    nmt = collect.read_metrics(nmt_path)
    history = collect.nmt_history(nmt_log)
    if nmt is None:
        blocks.append(not_run("NMT training", nmt_path, "train_nmt"))
    else:
        blocks.append(Paragraph(
            f"NMT: {fmt_int(nmt.get('steps'))} steps, final "
            f"train loss {fmt_num(nmt.get('train_loss'), 3)}, "
            f"dev loss {fmt_num(nmt.get('dev_loss'), 3)}, "
            f"mean dev chrF {fmt_num(nmt.get('chrf_mean'), 1)}."
            + ("" if history is not None else f" (No curve: {nmt_log} not found.)")
        ))
    rows, curves, moves = [], {}, []
    for regime, names in aligned.items():
        for name in names:
            metrics = collect.read_metrics(
                collect.metrics_file(metrics_dir, "train_encoder", name))
            curve = collect.loss_curve(Path(plots_dir) / name)
            if curve is not None:
                curves[name] = curve
            if metrics is None:
                rows.append((regime, name, *["not run"] * 4))
                continue
            rows.append((
                regime, name, fmt_int(metrics.get("steps")),
                _arrow(metrics, "train_loss_first", "train_loss_last"),
                _arrow(metrics, "dev_loss_start", "dev_loss_end"),
                fmt_int(metrics.get("rows_trained")),
            ))
            start, end = metrics.get("dev_loss_start"), metrics.get("dev_loss_end")
            if isinstance(start, (int, float)) and isinstance(end, (int, float)):
                verb = "fell" if end < start else "rose" if end > start else "stayed"
                moves.append(f"{name}: dev loss {verb} from {start:.3f} to {end:.3f}")
    blocks.append(Table(
        ("regime", "model", "steps", "train loss first → last", "dev loss start → end",
         "rows trained"),
        tuple(rows), f"Encoder alignment runs (train_encoder). {RUNTIME_NOTE}",
    ))
    if moves:
        blocks.append(Paragraph("; ".join(moves) + "."))
    if history is not None or curves:
        path = figures.curves_figure(curves, history, fig_dir / "training.png")
        blocks.append(Figure(path, "Training curves: NMT train/dev loss, encoder loss per step."))
    return blocks
