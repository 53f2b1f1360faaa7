"""The report's PNG figures, drawn with matplotlib's object API (Agg canvas, no pyplot state).

Every function takes ready tables, draws one figure and writes it atomically. Colours are
fixed per model (its position in the model list) so that the same model has the same
colour in every figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipeline.io import atomic_path

DPI = 110
_GROUP_SHADE = {"source": "#ececec", "seen": "#e3eefb", "unseen": "#fbefe3"}


def _palette(n: int) -> list:
    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def save(fig: Figure, path: Path, right: float = 1.0) -> Path:
    """Write ``fig`` as PNG to ``path`` (atomically) and return the path.

    Args:
        fig: The figure.
        path: Output PNG.
        right: Fraction of the width the axes may use (the rest holds a figure legend).
    """
    FigureCanvasAgg(fig)
    fig.tight_layout(rect=(0, 0, right, 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


def _shade_groups(ax, groups: Sequence[str]) -> None:
    """Shade runs of equal language groups behind bars and label them at the top."""
    start = 0
    for i in range(1, len(groups) + 1):
        if i == len(groups) or groups[i] != groups[start]:
            ax.axvspan(start - 0.5, i - 0.5, color=_GROUP_SHADE.get(groups[start], "#fff"),
                       zorder=0)
            ax.text((start + i - 1) / 2, 1.0, groups[start], transform=ax.get_xaxis_transform(),
                    ha="center", va="bottom", fontsize=9, color="#444")
            start = i


def _side_by_side(ax, table: pd.DataFrame, errors: pd.DataFrame | None = None,
                  **style) -> np.ndarray:
    """Bars of each row side by side, one colour per column (``errors``: error bars).

    Returns:
        The x position of each row.
    """
    n = len(table.columns)
    width = 0.8 / max(n, 1)
    x = np.arange(len(table))
    for k, (name, colour) in enumerate(zip(table.columns, _palette(n))):
        if errors is not None:
            style = {**style, "yerr": errors[name].to_numpy(dtype=float), "capsize": 3}
        ax.bar(x - 0.4 + width * (k + 0.5), table[name].to_numpy(dtype=float), width,
               label=str(name), color=colour, **style)
    return x


def _grid_and_legend_right(ax) -> None:
    ax.grid(axis="y", alpha=0.4, zorder=1)
    ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def grouped_bars(matrix: pd.DataFrame, groups: Sequence[str], title: str, ylabel: str,
                 path: Path, rotation: int = 45) -> Path:
    """Bars per language (x) and model (colour), the language groups shaded.

    Args:
        matrix: Rows languages, columns models (NaN: no bar).
        groups: The group of each row (``source``, ``seen``, ``unseen``).
        title: Figure title.
        ylabel: Y axis label.
        path: Output PNG.
        rotation: Angle of the x labels.
    """
    n_rows, n_models = matrix.shape
    fig = Figure(figsize=(max(8.0, 0.3 * n_rows * max(n_models, 2) + 3), 4.6))
    ax = fig.subplots()
    _shade_groups(ax, groups)
    x = _side_by_side(ax, matrix, zorder=2)
    ax.set_xticks(x, [str(i) for i in matrix.index], rotation=rotation,
                  ha="right" if rotation else "center", fontsize=9)
    ax.set_xlim(-0.6, n_rows - 0.4)
    ax.set_ylabel(ylabel)
    ax.set_title(title, pad=16)
    _grid_and_legend_right(ax)
    return save(fig, path)


def variant_bars(means: pd.DataFrame, stds: pd.DataFrame, title: str, ylabel: str,
                 path: Path) -> Path:
    """Bars per variant (x) and encoder (colour) with standard-deviation error bars.

    Args:
        means: Rows variants, columns encoders (NaN: no bar).
        stds: The spreads, same shape.
        title: Figure title.
        ylabel: Y axis label.
        path: Output PNG.
    """
    fig = Figure(figsize=(max(7.0, 1.1 * len(means) + 3), 4.4))
    ax = fig.subplots()
    x = _side_by_side(ax, means, stds, zorder=2)
    finite = means.to_numpy(dtype=float)
    finite = finite[np.isfinite(finite)]
    if finite.size:  # the differences are small: start the axis near the lowest bar
        ax.set_ylim(max(0.0, finite.min() - 8), min(100.0, finite.max() + 5))
    ax.set_xticks(x, [str(i) for i in means.index], rotation=20, ha="right", fontsize=9)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    _grid_and_legend_right(ax)
    return save(fig, path)


def family_bars(means: pd.DataFrame, models: Sequence[str], path: Path) -> Path:
    """Family × group averages (x) per model (colour); see ``compare.family_means``."""
    # The group is written above each shaded run, so the ticks name the family only.
    matrix = means[list(models)].set_axis(list(means.family))
    return grouped_bars(matrix, list(means.group), "Mean score per task family and language group",
                        "score (points)", path, rotation=0)


def corpus_figure(failures: pd.DataFrame | None, chrf: pd.DataFrame | None,
                  path: Path) -> Path:
    """Filter failures per language (stacked by filter) and MT chrF per language.

    Args:
        failures: Rows languages, columns filters: translations failing each filter; or
            ``None`` (no panel).
        chrf: Rows languages, columns chrF sources (e.g. NMT dev, corpus); or ``None``.
        path: Output PNG.
    """
    drawn = [d for d in (failures, chrf) if d is not None]
    fig = Figure(figsize=(6.0 * len(drawn), 4.4))
    axes = list(np.atleast_1d(fig.subplots(1, len(drawn))))
    if failures is not None:
        ax = axes.pop(0)
        bottom = np.zeros(len(failures))
        x = np.arange(len(failures))
        for name, colour in zip(failures.columns, _palette(len(failures.columns))):
            values = failures[name].to_numpy(dtype=float)
            ax.bar(x, values, 0.7, bottom=bottom, label=str(name), color=colour)
            bottom += values
        ax.set_xticks(x, list(failures.index), rotation=45, ha="right", fontsize=9)
        ax.set_ylabel("translations failing the filter")
        ax.set_title("Corpus filters per language")
        ax.legend(fontsize=8)
    if chrf is not None:
        ax = axes.pop(0)
        x = _side_by_side(ax, chrf)
        ax.set_xticks(x, list(chrf.index), rotation=45, ha="right", fontsize=9)
        ax.set_ylabel("chrF")
        ax.set_title("Machine translation quality per language")
        ax.grid(axis="y", alpha=0.4)
        ax.legend(fontsize=8)
    return save(fig, path)


def curves_figure(curves: Mapping[str, pd.DataFrame], nmt: pd.DataFrame | None,
                  path: Path) -> Path:
    """Training curves: the NMT model's train/dev loss and each encoder run's loss.

    Args:
        curves: Run name → loss curve (``step``, ``loss``).
        nmt: NMT history (``step``, ``train_loss``, ``dev_loss``) or ``None``.
        path: Output PNG.
    """
    panels = int(nmt is not None) + int(bool(curves))
    fig = Figure(figsize=(6.0 * panels, 4.2))
    axes = list(np.atleast_1d(fig.subplots(1, panels)))
    if nmt is not None:
        ax = axes.pop(0)
        ax.plot(nmt.step, nmt.train_loss, marker=".", label="train")
        ax.plot(nmt.step, nmt.dev_loss, marker=".", label="dev")
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy per token")
        ax.set_title("NMT training")
        ax.grid(alpha=0.4)
        ax.legend()
    if curves:
        ax = axes.pop(0)
        for (name, curve), colour in zip(curves.items(), _palette(len(curves))):
            ax.plot(curve.step, curve.loss, marker=".", label=name, color=colour)
        ax.set_xlabel("step")
        ax.set_ylabel("contrastive loss")
        ax.set_title("Encoder alignment")
        ax.grid(alpha=0.4)
        ax.legend(fontsize=8)
    return save(fig, path)


def projection_figure(panels: Sequence[tuple[str, np.ndarray, Sequence[str], np.ndarray]],
                      languages: Sequence[str], groups: Mapping[str, str], path: Path) -> Path:
    """One scatter panel per model: the verse sample in 2-D, coloured by language.

    Args:
        panels: Per model: title, coordinates ``(n, 2)``, the language of each point and
            the explained variance ratio of the two axes.
        languages: Languages in legend order.
        groups: Language → group; unseen languages are drawn as crosses.
        path: Output PNG.
    """
    fig = Figure(figsize=(5.0 * len(panels) + 1.8, 5.0))
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    colours = dict(zip(languages, _palette(len(languages))))
    for ax, (title, xy, point_langs, explained) in zip(axes, panels):
        point_langs = np.asarray(point_langs)
        for lang in languages:
            pick = point_langs == lang
            unseen = groups.get(lang) == "unseen"
            ax.scatter(xy[pick, 0], xy[pick, 1], s=16, color=colours[lang],
                       marker="x" if unseen else "o", alpha=0.85,
                       label=f"{lang} ({groups.get(lang, '')})")
        ax.set_title(title)
        ax.set_xlabel(f"PC1 ({explained[0]:.0%} of variance)")
        ax.set_ylabel(f"PC2 ({explained[1]:.0%} of variance)")
        ax.grid(alpha=0.3)
    handles, labels = axes[-1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8, markerscale=1.5)
    return save(fig, path, right=1 - 1.8 / (5.0 * len(panels) + 1.8))
