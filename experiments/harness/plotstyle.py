"""One look for every plot the project writes (the report's and the families' own figures): a fixed colour per
method (its `plot_color`, the same in every figure), a marker per experiment within its method, parameter counts
written as 83k or 1.3M, and PNGs without version or time stamps (the same numbers give the same bytes), cropped to
their content so no label is cut off."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

# colours for methods that declare none (`plot_color` in their baselines file), picked by a hash of the name
_SPARE = ("#ff7f0e", "#17becf", "#bcbd22", "#e377c2", "#7f7f7f", "#aec7e8", "#98df8a", "#c5b0d5")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")


def method_color(method: str) -> str:
    """The method's declared `plot_color`, else a fixed colour from its name: the same in every plot."""
    from baselines import get_method

    try:
        declared = get_method(method).plot_color
    except (KeyError, ValueError):
        declared = None
    if declared:
        return declared
    return _SPARE[int(hashlib.sha256(method.encode()).hexdigest(), 16) % len(_SPARE)]


def experiment_markers(rows: Iterable[tuple[str, str, Any]]) -> dict[str, str]:
    """{experiment: marker}: the experiments of one method, in order of their rank (then name), get distinct
    markers. `rows`: (experiment, method, rank or None)."""
    by_method: dict[str, list[tuple[Any, str]]] = {}
    for name, method, rank in rows:
        by_method.setdefault(method, []).append((rank if rank is not None else -1, name))
    out = {}
    for items in by_method.values():
        for i, (_, name) in enumerate(sorted(items)):
            out[name] = MARKERS[i % len(MARKERS)]
    return out


def log_scale(values: Iterable[float]) -> bool:
    """Whether parameter counts need a log axis: they span more than 3x."""
    vals = [v for v in values if v > 0]
    return bool(vals) and max(vals) / min(vals) > 3


def linear_limits(vals: list[float]) -> tuple[float, float]:
    lo, hi = min(vals), max(vals)
    pad = max((hi - lo) * 0.15, hi * 0.02)
    return lo - pad, hi + pad


def dodge(xs: list[float], log: bool, close: float = 1.15, step: float | None = None) -> list[float]:
    """x positions for markers at nearly the same x (within a factor `close`): each group spread around its centre,
    `step` of the axis's span apart (in log10 units on a log axis), so that experiments with equal parameter
    counts (LoRA-Dash beside LoRA of its rank) do not hide one another. The legend keeps the true counts."""
    step = (0.015 if log else 0.04) if step is None else step
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    out = list(xs)
    lo, hi = min(xs), max(xs)
    if log:
        span = (np.log10(hi) - np.log10(lo)) or 1.0
    else:
        left, right = linear_limits(xs)
        span = right - left
    group: list[int] = []
    for i in [*order, None]:
        if i is not None and group and xs[i] <= xs[group[0]] * close:
            group.append(i)
            continue
        for k, j in enumerate(group):
            shift = (k - (len(group) - 1) / 2) * step * span
            out[j] = xs[j] * 10**shift if log else xs[j] + shift
        group = [] if i is None else [i]
    return out


def count(x: float, _pos: Any = None) -> str:
    """82944 -> 83k, 1_300_000 -> 1.3M, 770 -> 770."""
    if x >= 1e6:
        return f"{x / 1e6:.3g}M"
    if x >= 1e3:
        return f"{x / 1e3:.3g}k"
    return f"{x:.0f}"


def parameter_axis(ax: Any, values: Iterable[float]) -> None:
    """A log axis when the counts span more than 3x, else a linear one (nearly equal counts on a log axis print
    their tick labels on top of one another); ticks as 83k / 1.3M either way."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator

    vals = [v for v in values if v > 0]
    if log_scale(vals):
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(
            LogLocator(base=10, subs=(1.0, 2.0, 5.0) if max(vals) / min(vals) < 100 else (1.0,))
        )
    else:
        ax.xaxis.set_major_locator(MaxNLocator(4))
        if vals:
            ax.set_xlim(*linear_limits(vals))
    ax.xaxis.set_major_formatter(FuncFormatter(count))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda *_: ""))


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # chosen before pyplot is imported: no display needed
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: Any, dpi: int = 110) -> None:
    """PNG without version or time stamp, cropped to its content (legends outside the axes included)."""
    fmt = {"format": "png"} if not isinstance(path, (str, Path)) else {}
    fig.savefig(path, dpi=dpi, metadata={"Software": None}, bbox_inches="tight", pad_inches=0.1, **fmt)
    pyplot().close(fig)
