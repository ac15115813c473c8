"""PNG plots of the summary rows, one file per plot kind and dataset.

Each plot of a dataset draws the metric its deltas, ▼ marks and claims are on (the rows' ``delta_metric``: the
dataset's ``claims_metric``, flexible, lenient on OrcaMath) and names it on the accuracy axis; rows without one
(made before rows had it) are drawn on the primary metric. The out-of-domain heatmap draws each column on its own
set's metric and names it under the set.

Files (``<dataset>`` is the dataset name reduced to ``[A-Za-z0-9_.-]``, made unique when two names
reduce to the same text):

- ``accuracy_by_model_<dataset>.png``: grouped bars, models on x by size, one bar per method, std error bars.
- ``accuracy_vs_size_<dataset>.png``: accuracy against total parameters, a line per method, ticked at each
  model's size and labelled as the bar plot labels it (135M); log x where the sizes span more than
  ``LOG_SIZE_SPAN`` (the study's 135M to 1.2B), linear otherwise. The baselines are included since their total
  parameters are the base model's.
- ``accuracy_vs_trainable_<dataset>.png`` and ``accuracy_vs_train_time_<dataset>.png``:
  accuracy against trainable parameters / mean training time (log x), a line per fine-tuned method.
  Zero-shot and few-shot train nothing (0 trainable parameters, 0 s), which has no place on a log axis,
  and one reference line per model would clutter the plot, so the baselines are left out of these two;
  they are in the other plots. A plot with no point to draw is not written.
- ``ood_accuracy_<dataset>.png``: heatmap of mean accuracy of the models trained on
  ``<dataset>`` (rows model · method) on every evaluation set (columns, in-domain first); only written
  when there are out-of-domain results.

The accuracy axes end a little above the highest mean + std drawn (``accuracy_top``), and the heatmap's colours
span 0 to its largest cell, so that accuracies of a few percent are not squeezed into the bottom of a 0-100 scale;
the heatmap's colourbar names its range where it is not 0-100.

Figures are drawn with the Agg canvas directly and never through pyplot, so no global backend is
switched and a caller's own matplotlib state is left alone.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatterSciNotation, NullLocator
from matplotlib.transforms import Bbox

from slm_sweep.scoring import PRIMARY_METRIC, accuracy_key

from .aggregate import DELTA_BASELINES, UNTRAINED_SOURCES
from .ordering import is_fine_tuned, method_label, row_sort_key

DPI = 120
# the primary metric's columns: what rows without a delta_metric (made before rows had one) are drawn on
_MEAN, _STD = f"{accuracy_key(PRIMARY_METRIC)}_mean", f"{accuracy_key(PRIMARY_METRIC)}_std"


def plotted_metric(rows: Sequence[dict[str, Any]]) -> str:
    """The metric a plot of ``rows`` draws: their ``delta_metric`` (the set's claims metric), the most common one
    where rows were run with different claims metrics, the primary metric for rows without one."""
    counted = Counter(r.get("delta_metric") or PRIMARY_METRIC for r in rows)
    return counted.most_common(1)[0][0] if counted else PRIMARY_METRIC


def _mean(row: dict[str, Any], metric: str) -> float | None:
    return row.get(f"{accuracy_key(metric)}_mean")


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "dataset"


def file_slugs(names: Sequence[str]) -> dict[str, str]:
    """A file-name-safe, distinct slug per name."""
    slugs: dict[str, str] = {}
    used: set[str] = set()
    for name in sorted(set(names)):
        base = candidate = _slug(name)
        suffix = 2
        while candidate in used:
            candidate = f"{base}_{suffix}"
            suffix += 1
        used.add(candidate)
        slugs[name] = candidate
    return slugs


def label_colors(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One color per method label of the rows (``lora (r=8)``), in report order and all distinct, so that a
    label looks the same in every plot of a report and no two labels share a color, however many variants."""
    from matplotlib import colormaps

    labels = _methods(rows)
    if len(labels) <= 10:
        palette = list(colormaps["tab10"].colors)
    elif len(labels) <= 20:
        palette = list(colormaps["tab20"].colors)
    else:
        palette = [colormaps["turbo"](i / (len(labels) - 1)) for i in range(len(labels))]
    return dict(zip(labels, palette))


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, format="png")
    return path


def _percent(value: float | None) -> float:
    return math.nan if value is None else 100 * value


def _short_number(value: float) -> str:
    """One decimal below 10 where it shows (1.2, 6.7), none otherwise (2, 135)."""
    return f"{value:.1f}" if abs(value) < 10 and round(value, 1) != round(value) else f"{value:.0f}"


def _in_units(value: float, units: Sequence[tuple[str, float, float]]) -> str:
    """``value`` in the first of ``units`` (name, scale, the next unit's size in this one; the last unit's is
    infinite) where it reads below the next unit once rounded (999,950 is 1M, not 1000K)."""
    for name, scale, next_size in units:
        text = _short_number(value / scale)
        if abs(float(text)) < next_size:
            return text + name
    raise ValueError(f"{value} is past the last unit of {units}")


def human_count(n: float) -> str:
    """A parameter count as people write it: 104K, 135M, 1.2B."""
    return _in_units(n, (("", 1, 1e3), ("K", 1e3, 1e3), ("M", 1e6, 1e3), ("B", 1e9, math.inf)))


def human_duration(seconds: float) -> str:
    """A duration as people write it: 40 s, 6.5 min, 2 h."""
    return _in_units(seconds, ((" s", 1, 60), (" min", 60, 60), (" h", 3600, math.inf)))


class ReadableLogFormatter(LogFormatterSciNotation):
    """A log axis's labels as ``write`` writes them (135M, not 1.35×10^8; 6.7 min, not 4×10^2), on the ticks the
    axis labels by itself: the decades, and minor ticks where it spans too little for a decade to show (models of
    135M to 268M)."""

    def __init__(self, write: Callable[[float], str], **kwargs) -> None:
        super().__init__(**kwargs)
        self.write = write

    def __call__(self, x: float, pos: int | None = None) -> str:
        return self.write(x) if super().__call__(x, pos) else ""


def _readable_log_axis(axis, write: Callable[[float], str]) -> None:
    """Label a log axis as people write its quantity (``write``), major and minor ticks alike."""
    axis.set_major_formatter(ReadableLogFormatter(write))
    axis.set_minor_formatter(ReadableLogFormatter(write, labelOnlyBase=False))


# model sizes spanning more than this are drawn on a log axis; within it a log axis only bends a few sizes' spacing
LOG_SIZE_SPAN = 3.0


def _size_axis(ax, sizes: Sequence[float]) -> None:
    """Tick the x axis at the models' own ``sizes`` only, labelled as the bar plot labels them (135M): an axis's
    own ticks fall between the models (200M, 300M). Log where the sizes span more than LOG_SIZE_SPAN."""
    sizes = sorted(set(sizes))
    if sizes[-1] > LOG_SIZE_SPAN * sizes[0]:
        ax.set_xscale("log")
    ax.set_xticks(sizes, [human_count(size) for size in sizes])
    ax.xaxis.set_minor_locator(NullLocator())


def _stagger_tick_labels(fig: Figure, ax) -> None:
    """Put each x tick label on the first line below the axis where it clears the labels already there, so that
    labels of close ticks (362M beside 370M) do not print over each other. Lays the figure out first: where a
    tick lands depends on the axes' final width."""
    FigureCanvasAgg(fig)
    fig.tight_layout()
    renderer = fig.canvas.get_renderer()
    pad = renderer.points_to_pixels(4)
    ends: list[float] = []  # the right end of the last label on each line
    ticks, texts = [], []
    for tick, label in sorted(zip(ax.get_xticks(), ax.get_xticklabels()), key=lambda pair: pair[0]):
        centre = ax.transData.transform((tick, 0))[0]
        half = label.get_window_extent(renderer).width / 2
        line = next((i for i, end in enumerate(ends) if end + pad <= centre - half), len(ends))
        ends[line:line + 1] = [centre + half]
        ticks.append(tick)
        texts.append("\n" * line + label.get_text())
    if len(ends) > 1:
        ax.set_xticks(ticks, texts)


CAVEAT = "(mean ± std over seeds; no bar: one seed)"
# the accuracy axis and the heatmap's colours end above the data, not at 100 %: accuracies of a few percent would
# otherwise sit in the bottom strip of the plot and share one colour
HEADROOM = 1.15
MIN_TOP = 5.0


def accuracy_top(values: Sequence[float]) -> float:
    """Where an accuracy axis of these values (percent, mean + spread; NaN ignored) ends: HEADROOM above the
    largest, at least MIN_TOP, at most 100."""
    finite = [v for v in values if not math.isnan(v)]
    return min(100.0, max(MIN_TOP, HEADROOM * max(finite, default=0.0)))


def _accuracy_axis(ax, metric: str = PRIMARY_METRIC, tops: Sequence[float] = ()) -> None:
    """An accuracy axis from 0 (error bars must not draw it below) to ``accuracy_top`` of ``tops``, the drawn
    means plus their error bars."""
    ax.set_ylim(0, accuracy_top(tops))
    ax.set_ylabel(f"{metric} accuracy (%)")


def _tops(ys: Sequence[float], errs: Sequence[float]) -> list[float]:
    """Each drawn value's highest point: its mean plus its error bar (none for one seed)."""
    return [y + (0.0 if math.isnan(e) else e) for y, e in zip(ys, errs)]


def _legend(ax) -> None:
    """The method legend beside the axes, where it covers no bar or point of an axis that ends near the data."""
    ax.legend(title="method", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title_fontsize=8)


def seeds_text(rows: Sequence[dict[str, Any]]) -> str:
    """How many seeds the rows' means are over: ``3 seeds``, ``1–3 seeds per row``, ``seeds`` where unknown."""
    counts = sorted({r["n"] for r in rows if r.get("n")})
    if not counts:
        return "seeds"
    if len(counts) == 1:
        return f"{counts[0]} seed{'' if counts[0] == 1 else 's'}"
    return f"{counts[0]}–{counts[-1]} seeds per row"


def _methods(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The rows' method labels (``lora (r=8)``) in report order."""
    return list(dict.fromkeys(method_label(r) for r in sorted(rows, key=row_sort_key)))


def _models(rows: Sequence[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["model"] for r in rows))  # rows are already sorted by model size


def _error_bar(row: dict[str, Any], metric: str = PRIMARY_METRIC) -> float:
    """The row's std over seeds in points; NaN (no bar drawn) for one seed, which has no spread to show."""
    std = row.get(f"{accuracy_key(metric)}_std")
    return math.nan if std is None else _percent(std)


def plot_accuracy_by_model(rows: Sequence[dict[str, Any]], dataset: str, path: Path, colors: dict) -> Path:
    models, methods, metric = _models(rows), _methods(rows), plotted_metric(rows)
    by_cell = {(r["model"], method_label(r)): r for r in rows}
    sizes = {r["model"]: r["total_params"] for r in rows if r["method"] in DELTA_BASELINES}
    for r in rows:
        sizes.setdefault(r["model"], r["total_params"])

    fig = Figure(figsize=(max(6.0, 1.2 * len(models) * max(1, len(methods)) / 2.5), 4.5))
    ax = fig.subplots()
    width = 0.8 / len(methods)
    tops: list[float] = []
    for i, method in enumerate(methods):
        xs, ys, errs = [], [], []
        for j, model in enumerate(models):
            row = by_cell.get((model, method))
            if row is None or _mean(row, metric) is None:
                continue
            xs.append(j - 0.4 + width * (i + 0.5))
            ys.append(_percent(_mean(row, metric)))
            errs.append(_error_bar(row, metric))
        ax.bar(xs, ys, width, yerr=errs, capsize=3, label=method, color=colors[method])
        tops += _tops(ys, errs)
    labels = [m if sizes.get(m) is None else f"{m}\n{human_count(sizes[m])}" for m in models]
    ax.set_xticks(range(len(models)), labels)
    _accuracy_axis(ax, metric, tops)
    ax.set_title(f"{dataset}: accuracy by model\n{CAVEAT}", fontsize=10)  # on one line it overflows 6 inches
    _legend(ax)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_accuracy_vs(
    rows: Sequence[dict[str, Any]],
    dataset: str,
    path: Path,
    colors: dict,
    x_of: Callable[[dict[str, Any]], float | None],
    x_label: str,
    title: str,
    annotate: bool,
    size_axis: bool = False,
    write_x: Callable[[float], str] | None = None,
) -> Path | None:
    """Accuracy (``plotted_metric``) against a positive quantity on a log axis, one line per method;
    ``size_axis``: the quantity is the models' sizes, which carry the ticks (``_size_axis``), on a log axis only
    where they span more than LOG_SIZE_SPAN; ``write_x``: how the
    axis's labels write the quantity (``human_count``), matplotlib's powers of ten without it."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    metric = plotted_metric(rows)
    tops: list[float] = []
    named: list[tuple[str, float, float]] = []  # (model, x, y) of every drawn point, for its label
    for method in _methods(rows):
        points = []
        for row in rows:
            x = x_of(row)
            if (
                method_label(row) == method
                and x is not None
                and x > 0
                and _mean(row, metric) is not None
            ):
                points.append((x, row))
        if not points:
            continue
        points.sort(key=lambda p: p[0])
        xs = [x for x, _ in points]
        ys = [_percent(_mean(r, metric)) for _, r in points]
        errs = [_error_bar(r, metric) for _, r in points]
        ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=method, color=colors[method])
        tops += _tops(ys, errs)
        named += [(row["model"], x, y) for x, y, (_, row) in zip(xs, ys, points)]
    if not named:
        return None
    if size_axis:
        _size_axis(ax, [x for _, x, _ in named])
    else:
        ax.set_xscale("log")
        if write_x is not None:
            _readable_log_axis(ax.xaxis, write_x)
    ax.set_xlabel(x_label)
    _accuracy_axis(ax, metric, tops)
    ax.set_title(f"{dataset}: {title}\n{CAVEAT}", fontsize=10)
    _legend(ax)
    ax.grid(alpha=0.3, which="both")
    if size_axis:  # before the labels: staggered tick labels change the layout the labels are placed on
        _stagger_tick_labels(fig, ax)
    if annotate:
        _label_models(fig, ax, named)
    return _save(fig, path)


# points of one model closer than this (fractions of the axes' width and height: about a 7-point label's size on
# these 7 x 4.5 inch plots) would print their labels over each other, and share one
_LABEL_NEAR = (0.1, 0.045)
# where a label may sit, in points from its point: beside it (above right first, then below right, above left,
# below left), then a line and two lines further up or down, where four points crowd one spot
_LABEL_PLACES = tuple((dx, sign * rise, "left" if dx > 0 else "right", "bottom" if sign > 0 else "top")
                      for rise in (4, 12, 20) for dx in (4, -4) for sign in (1, -1))
_MARKER_RADIUS = 3.5  # points: errorbar's marker "o" is 6 points across


def _label_models(fig: Figure, ax, points: Sequence[tuple[str, float, float]]) -> None:
    """Name each point's model, once where several of its points lie within a label's size (methods of one model
    often share an x: LoRA and DoRA train as many parameters), which a label per point printed over itself; the
    highest of them carries it. Each label takes the first of _LABEL_PLACES where it covers no label already placed
    and no point's marker (two models' adapters of about one size put their points side by side), the first place
    where none is free. Call once the axes, title and legend are set: places are found on the laid-out figure."""
    FigureCanvasAgg(fig)
    fig.tight_layout()
    renderer = fig.canvas.get_renderer()
    to_axes = ax.transData + ax.transAxes.inverted()
    radius = renderer.points_to_pixels(_MARKER_RADIUS)
    taken = [Bbox.from_extents(px - radius, py - radius, px + radius, py + radius)
             for px, py in ax.transData.transform([(x, y) for _, x, y in points])]
    labelled: dict[str, list[tuple[float, float]]] = {}
    for model, x, y in sorted(points, key=lambda p: -p[2]):
        px, py = to_axes.transform((x, y))
        if any(abs(px - lx) < _LABEL_NEAR[0] and abs(py - ly) < _LABEL_NEAR[1] for lx, ly in labelled.get(model, ())):
            continue
        labelled.setdefault(model, []).append((px, py))
        for place in _LABEL_PLACES:
            label = _annotate(ax, model, (x, y), place)
            box = label.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in taken):
                break
            label.remove()
        else:
            box = _annotate(ax, model, (x, y), _LABEL_PLACES[0]).get_window_extent(renderer)
        taken.append(box)


def _annotate(ax, text: str, xy: tuple[float, float], place: tuple[float, float, str, str]):
    dx, dy, ha, va = place
    return ax.annotate(text, xy, textcoords="offset points", xytext=(dx, dy), fontsize=7, ha=ha, va=va)


def plot_ood_heatmap(
    in_domain: Sequence[dict[str, Any]], ood: Sequence[dict[str, Any]], dataset: str, path: Path
) -> Path:
    import numpy as np

    eval_sets = [dataset, *sorted({r["eval_set"] for r in ood} - {dataset})]
    # each column on its own set's metric: the training dataset's in-domain, the evaluation set's out of domain
    metrics = [plotted_metric(in_domain), *(plotted_metric([r for r in ood if r["eval_set"] == s])
                                            for s in eval_sets[1:])]
    order = list(dict.fromkeys((r["model"], method_label(r)) for r in (*in_domain, *ood)))
    values = np.full((len(order), len(eval_sets)), np.nan)
    index = {cell: i for i, cell in enumerate(order)}
    for row in in_domain:
        values[index[row["model"], method_label(row)], 0] = _percent(_mean(row, metrics[0]))
    for row in ood:
        column = eval_sets.index(row["eval_set"])
        values[index[row["model"], method_label(row)], column] = _percent(_mean(row, metrics[column]))

    fig = Figure(figsize=(max(5.0, 1.4 * len(eval_sets) + 3), max(3.0, 0.35 * len(order) + 1.5)))
    ax = fig.subplots()
    # colours span 0 to the largest cell (at least MIN_TOP), not 0 to 100 %: the colourbar says so, unless that cell
    # reads 100.0
    vmax = max(MIN_TOP, float(np.nanmax(values, initial=0.0)))
    vmax = 100.0 if f"{vmax:.1f}" == "100.0" else vmax
    image = ax.imshow(np.ma.masked_invalid(values), aspect="auto", cmap="viridis", vmin=0, vmax=vmax)
    # set names run into each other when level: slanted, each ending under its column
    ax.set_xticks(range(len(eval_sets)), [f"{dataset}\n(in-domain, {metrics[0]})",
                                          *(f"{s}\n({m})" for s, m in zip(eval_sets[1:], metrics[1:]))],
                  rotation=30, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(len(order)), [f"{model} · {method}" for model, method in order])
    for i in range(len(order)):
        for j in range(len(eval_sets)):
            if not math.isnan(values[i, j]):
                color = "black" if image.norm(values[i, j]) > 0.6 else "white"  # readable on light cells
                ax.text(j, i, f"{values[i, j]:.1f}", ha="center", va="center", fontsize=7, color=color)
    shared = set(metrics)
    label = f"{metrics[0]} accuracy (%)" if len(shared) == 1 else "accuracy (%), metric per set"
    fig.colorbar(image, ax=ax, label=label if vmax == 100 else f"{label}\n(scale 0–{vmax:.1f}, not 0–100)")
    ax.set_title(f"trained on {dataset}: accuracy per evaluation set\n"
                 f"(mean over {seeds_text([*in_domain, *ood])}; no spread shown)", fontsize=10)
    return _save(fig, path)


def write_plots(
    rows: Sequence[dict[str, Any]], ood_rows: Sequence[dict[str, Any]], out_dir: str | os.PathLike
) -> list[Path]:
    """Write every plot that has something to show; returns the written paths."""
    out_dir = Path(out_dir)
    colors = label_colors([*rows, *ood_rows])
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    slugs = file_slugs(datasets + [r["dataset"] for r in ood_rows])
    written: list[Path] = []
    for dataset in datasets:
        subset = [r for r in rows if r["dataset"] == dataset]
        fine_tuned = [r for r in subset if r.get("trained", is_fine_tuned(r["method"]))]
        slug = slugs[dataset]
        written.append(
            plot_accuracy_by_model(subset, dataset, out_dir / f"accuracy_by_model_{slug}.png", colors)
        )
        # random-weight controls share their model's size: drawn beside it they would read as a size effect
        pretrained = [r for r in subset if r.get("model_source") not in UNTRAINED_SOURCES] or subset
        # a model's size is its base's (the smallest total of its rows): an adapter's parameters would put one model
        # at two sizes
        base = {}
        for r in pretrained:
            if r.get("total_params") is not None:
                base[r["model"]] = min(base.get(r["model"], r["total_params"]), r["total_params"])
        sizes = {}
        for r in pretrained:
            sizes.setdefault(base.get(r["model"]), set()).add(r["model"])
        shared = any(len(models) > 1 for models in sizes.values())  # two models at one size: name the points
        candidates = [
            (pretrained, "size", lambda r, base=base: base.get(r["model"]), "model parameters (base)",
             "accuracy vs model size", shared, True, None),
            (fine_tuned, "trainable", lambda r: r["trainable_params"], "trainable parameters",
             "accuracy vs trainable parameters (fine-tuned methods)", True, False, human_count),
            (fine_tuned, "train_time", lambda r: r["train_time_s_mean"], "mean training time",
             "accuracy vs training time (fine-tuned methods)", True, False, human_duration),
        ]  # fmt: skip
        for plot_rows, kind, x_of, x_label, title, annotate, size_axis, write_x in candidates:
            path = plot_accuracy_vs(
                plot_rows,
                dataset,
                out_dir / f"accuracy_vs_{kind}_{slug}.png",
                colors,
                x_of,
                x_label,
                title,
                annotate,
                size_axis,
                write_x,
            )
            if path is not None:
                written.append(path)
    for dataset in sorted({r["dataset"] for r in ood_rows}):
        written.append(
            plot_ood_heatmap(
                [r for r in rows if r["dataset"] == dataset],
                [r for r in ood_rows if r["dataset"] == dataset],
                dataset,
                out_dir / f"ood_accuracy_{slugs[dataset]}.png",
            )
        )
    return written
