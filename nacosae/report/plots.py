"""Plots shared by `nacosae report` and the dashboard: one style, PNG bytes out."""

from __future__ import annotations

import io
from typing import Any

STYLE = {
    "figure.figsize": (5.0, 3.0),
    "figure.dpi": 100,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "font.size": 9,
}
COLOURS = {
    "initial-top": "#4c72b0",
    "initial-random": "#8c8c8c",
    "llm": "#dd8452",
    "summary": "#55a868",
}


def _png(*draws: Any, dpi: int = 100) -> bytes:
    """One figure with a panel per drawer, side by side, as PNG bytes. Several panels get fixed
    margins instead of tight_layout, which draws the whole figure a second time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.rc_context({**STYLE, "figure.dpi": dpi}):
        width, height = STYLE["figure.figsize"]
        fig, axes = plt.subplots(1, len(draws), figsize=(width * len(draws), height), squeeze=False)
        for draw, ax in zip(draws, axes[0], strict=True):
            draw(ax)
        if len(draws) == 1:
            fig.tight_layout()
        else:  # small panels: fewer ticks read as well and draw faster (ticks dominate the cost)
            from matplotlib.ticker import MaxNLocator

            for ax in axes[0]:
                ax.yaxis.set_major_locator(MaxNLocator(nbins=4))
                ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
            fig.subplots_adjust(left=0.05, right=0.98, bottom=0.17, top=0.95, wspace=0.3)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        plt.close(fig)
    return buffer.getvalue()


def _scores_per_iteration_drawer(events: list[dict[str, Any]], metric: str) -> Any:
    """Each scored concept's score at its iteration, coloured by where it came from."""
    scored = [e for e in events if e.get("score") is not None]

    def draw(ax: Any) -> None:
        for source, colour in COLOURS.items():
            points = [(e["iteration"], e["score"]) for e in scored if e["source"] == source]
            if points:
                ax.scatter(*zip(*points, strict=True), s=18, color=colour, label=source)
        ax.set_xlabel("iteration")
        ax.set_ylabel(metric)
        ax.legend(fontsize=7)

    return draw


def scores_per_iteration(events: list[dict[str, Any]], metric: str) -> bytes:
    return _png(_scores_per_iteration_drawer(events, metric))


LINE_STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "x")


def _best_so_far_drawer(
    curves: dict[str, list[float]], metric: str, legend_inside: bool = False
) -> Any:
    """Best score after each scored concept, one line per neuron or run; each line its own dash
    and marker, so coinciding curves stay distinguishable; the legend outside the data."""

    def draw(ax: Any) -> None:
        from matplotlib.ticker import MaxNLocator

        for k, (label, curve) in enumerate(curves.items()):
            ax.plot(
                range(1, len(curve) + 1),
                curve,
                label=label,
                linestyle=LINE_STYLES[k % len(LINE_STYLES)],
                marker=MARKERS[k % len(MARKERS)],
                markersize=3,
            )
        if metric == "auc":
            ax.axhline(0.5, color="grey", linewidth=0.8, linestyle="--", label="chance")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("concepts scored")
        ax.set_ylabel(f"best {metric} so far")
        if legend_inside:
            ax.legend(fontsize=7, loc="lower right")
        elif len(curves) > 1 or metric == "auc":
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))

    return draw


def best_so_far(curves: dict[str, list[float]], metric: str) -> bytes:
    return _png(_best_so_far_drawer(curves, metric))


def _relative_scores_drawer(events: list[dict[str, Any]], metric: str) -> Any:
    """Each proposal's score relative to the best initial (control-class) concept."""
    scored = [e for e in events if e.get("score") is not None]
    initial = [e["score"] for e in scored if e["iteration"] == 0]
    base = max(initial) if initial else 0.0

    def draw(ax: Any) -> None:
        later = [e for e in scored if e["iteration"] > 0]
        ax.bar([e["iteration"] for e in later], [e["score"] - base for e in later], color="#dd8452")
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xlabel("iteration")
        ax.set_ylabel(f"{metric} - best initial")

    return draw


def relative_scores(events: list[dict[str, Any]], metric: str) -> bytes:
    return _png(_relative_scores_drawer(events, metric))


def score_histogram(scores: list[float], metric: str) -> bytes:
    def draw(ax: Any) -> None:
        ax.hist(scores, bins=min(20, max(5, len(scores))), color="#4c72b0")
        ax.set_xlabel(f"best {metric} per neuron")
        ax.set_ylabel("neurons")

    return _png(draw)


def neuron_panels(events: list[dict[str, Any]], curve: list[float], metric: str) -> bytes:
    """The three plots of one neuron as one smaller figure (one render instead of three: the
    report draws one per neuron)."""
    return _png(
        _scores_per_iteration_drawer(events, metric),
        _best_so_far_drawer({"best so far": curve}, metric, legend_inside=True),
        _relative_scores_drawer(events, metric),
        dpi=72,
    )


def best_iteration_histogram(counts: dict[str, int]) -> bytes:
    """Units per iteration that found their best concept (0: an initial class; summary last)."""

    def draw(ax: Any) -> None:
        labels = list(counts)
        ax.bar(range(len(labels)), list(counts.values()), color="#4c72b0")
        ax.set_xticks(range(len(labels)), labels, fontsize=7)
        ax.set_xlabel("iteration of the best concept")
        ax.set_ylabel("units")

    return _png(draw)


def cumulative_best_curves(curves: list[list[float]], metric: str) -> bytes:
    """Every unit's best score after each iteration (faint), with the median across units."""
    import statistics

    def draw(ax: Any) -> None:
        for curve in curves:
            ax.plot(range(len(curve)), curve, color="#8c8c8c", alpha=0.3, linewidth=0.8)
        longest = max((len(c) for c in curves), default=0)
        median = [
            statistics.median(c[min(i, len(c) - 1)] for c in curves if c) for i in range(longest)
        ]
        if median:
            ax.plot(range(longest), median, color="#dd8452", linewidth=2, label="median unit")
            ax.legend(fontsize=7, loc="lower right")
        ax.set_xlabel("iteration (0: initial history)")
        ax.set_ylabel(f"best {metric} so far")

    return _png(draw)
