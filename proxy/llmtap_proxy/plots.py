"""PNG plots for `llmtap report --plot DIR` (matplotlib, Agg canvas; no pyplot global state).

- `ttft_itl_distribution.png`: empirical CDFs of TTFT and ITL, one curve per model and level;
- `saturation.png`: throughput, average latency and ITL p50 against concurrency, one line per model
  (the scaling curve: where it bends, the deployment saturates);
- `ttft_vs_input_tokens.png`: TTFT against input tokens per model, with the least-squares line whose
  slope the report's prefill note quotes.

Each function returns a `FigureInfo` read back from the drawn figure (axes, series, point counts), so
callers and tests can check what was actually plotted.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmtap_proxy.report import Analysis, Call, Row

__all__ = ["AxesInfo", "FigureInfo", "SeriesInfo", "write_plots"]

DPI = 100
_STYLES = ("-", "--", ":", "-.")


@dataclass
class SeriesInfo:
    label: str
    kind: str  # "line" or "scatter"
    points: int


@dataclass
class AxesInfo:
    title: str
    xlabel: str
    ylabel: str
    series: list[SeriesInfo] = field(default_factory=list)


@dataclass
class FigureInfo:
    path: str
    title: str
    axes: list[AxesInfo] = field(default_factory=list)


def _figure(width: float, height: float, columns: int) -> tuple[Any, list[Any]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, columns, squeeze=False)[0]
    return figure, list(axes)


def _save(figure: Any, path: Path, title: str) -> FigureInfo:
    figure.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI, format="png")
    info = FigureInfo(str(path), title)
    for ax in figure.axes:
        axes = AxesInfo(ax.get_title(), ax.get_xlabel(), ax.get_ylabel())
        for line in ax.get_lines():
            if not str(line.get_label()).startswith("_"):
                axes.series.append(SeriesInfo(str(line.get_label()), "line", len(line.get_xdata())))
        for collection in ax.collections:
            if not str(collection.get_label()).startswith("_"):
                axes.series.append(SeriesInfo(str(collection.get_label()), "scatter", len(collection.get_offsets())))
        info.axes.append(axes)
    return info


def _ecdf(values: list[float]) -> tuple[list[float], list[float]]:
    ordered = sorted(values)
    n = len(ordered)
    return ordered, [(i + 1) / n for i in range(n)]


def _label(model: str, concurrency: int | None, source: str, sources: int) -> str:
    label = model if concurrency is None else f"{model} c={concurrency}"
    return f"{label} ({source})" if sources > 1 else label


def plot_distributions(calls: list[Call], path: Path) -> FigureInfo:
    groups: dict[tuple[str, str, int | None], list[Call]] = defaultdict(list)
    for call in calls:
        if not call.cold and call.error is None:
            groups[(call.model, call.source, call.concurrency)].append(call)
    sources = len({source for _, source, _ in groups})
    models = sorted({model for model, _, _ in groups})
    figure, (ttft_ax, itl_ax) = _figure(11, 4.2, 2)
    seen: dict[str, int] = defaultdict(int)
    for (model, source, level), group in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or 0)):
        # one colour per model, one line style per level
        style = {"color": f"C{models.index(model) % 10}", "linestyle": _STYLES[seen[model] % len(_STYLES)],
                 "label": _label(model, level, source, sources), "where": "post"}
        seen[model] += 1
        ttfts = [c.ttft * 1000 for c in group if c.ttft is not None]
        if ttfts:
            ttft_ax.step(*_ecdf(ttfts), **style)
        itl = [gap * 1000 for c in group for gap in (c.itl or [])]
        if itl:
            itl_ax.step(*_ecdf(itl), **style)
    for ax, name in ((ttft_ax, "TTFT"), (itl_ax, "ITL (per content chunk)")):
        ax.set_title(f"{name} distribution")
        ax.set_xlabel(f"{name.split()[0]} (ms)")
        ax.set_ylabel("fraction of samples ≤ x")
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "no per-chunk samples (spans)" if name.startswith("ITL") else "no samples",
                    ha="center", va="center", transform=ax.transAxes)
    return _save(figure, path, "TTFT and ITL distributions")


def plot_saturation(rows: list[Row], path: Path) -> FigureInfo | None:
    by_model: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        if row.concurrency is not None and row.requests:
            by_model[row.model].append(row)
    if not by_model:
        return None
    figure, (tput_ax, lat_ax, itl_ax) = _figure(14, 4.2, 3)
    all_levels = sorted({r.concurrency for rows_ in by_model.values() for r in rows_ if r.concurrency is not None})
    for model, model_rows in sorted(by_model.items()):
        model_rows.sort(key=lambda r: r.concurrency or 0)
        levels = [r.concurrency for r in model_rows]
        tput = [r.normalized_tokens_per_s if r.normalized_tokens_per_s is not None else r.provider_tokens_per_s
                for r in model_rows]
        if all(v is not None for v in tput):
            tput_ax.plot(levels, tput, marker="o", label=model)
        latency = [r.latency_avg for r in model_rows]
        if all(v is not None for v in latency):
            lat_ax.plot(levels, latency, marker="o", label=model)
        itl = [r.itl_p50 * 1000 if r.itl_p50 is not None else None for r in model_rows]
        if all(v is not None for v in itl):
            itl_ax.plot(levels, itl, marker="o", label=model)
    for ax, title, ylabel in (
        (tput_ax, "throughput", "output tokens/s (normalised)"),
        (lat_ax, "average latency", "latency (s)"),
        (itl_ax, "ITL p50", "ITL p50 (ms)"),
    ):
        ax.set_title(title)
        ax.set_xlabel("concurrency")
        ax.set_ylabel(ylabel)
        ax.set_xscale("log", base=2)
        ax.set_xticks(all_levels, [str(level) for level in all_levels])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
        if ax.get_lines():
            ax.legend(fontsize="small")
    return _save(figure, path, "scaling with concurrency")


def plot_ttft_vs_input(calls: list[Call], analyses: dict[str, Analysis], path: Path) -> FigureInfo:
    figure, (ax,) = _figure(7, 4.5, 1)
    for model, analysis in sorted(analyses.items()):
        fit = analysis.fit
        usable = [c for c in calls if c.model == model and not c.cold and c.error is None
                  and c.ttft is not None and c.input_tokens]
        levels = sorted({c.concurrency for c in usable if c.concurrency is not None})
        if levels:  # the lowest level, as the fit (less queueing in TTFT)
            usable = [c for c in usable if c.concurrency == levels[0]]
        if not usable:
            continue
        level = f" c={levels[0]}" if levels else ""
        xs = [float(c.input_tokens) for c in usable]  # type: ignore[arg-type]
        ax.scatter(xs, [c.ttft * 1000 for c in usable], s=14, alpha=0.7, label=f"{model}{level}")  # type: ignore[operator]
        if fit is not None:
            low, high = min(xs), max(xs)
            ax.plot([low, high], [(fit.intercept + fit.slope * x) * 1000 for x in (low, high)], linestyle="--",
                    label=f"{model}: {fit.slope * 1000:.3g} ms/token, R² {fit.r2:.2f}")
    ax.set_xlabel("input tokens")
    ax.set_ylabel("TTFT (ms)")
    ax.grid(alpha=0.3)
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    if ax.get_lines() or ax.collections:
        ax.legend(fontsize="small")
    return _save(figure, path, "TTFT against prompt length (slope = prefill cost)")


def write_plots(calls: list[Call], rows: list[Row], analyses: dict[str, Analysis], directory: str) -> list[FigureInfo]:
    """Write the PNGs into `directory`; returns what each contains. Raises ImportError without matplotlib."""
    import matplotlib  # noqa: F401 - fail early with ImportError

    out = Path(directory)
    infos = [plot_distributions(calls, out / "ttft_itl_distribution.png")]
    saturation = plot_saturation(rows, out / "saturation.png")
    if saturation is not None:
        infos.append(saturation)
    infos.append(plot_ttft_vs_input(calls, analyses, out / "ttft_vs_input_tokens.png"))
    return infos
