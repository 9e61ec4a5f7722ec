"""The planted family's own figures (written by `make tables` beside the generic ones, from run records only):
distance to the teacher against trainable parameters, and direction recovery per layer."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

TASK = "planted"
COLORS = {"band": "tab:blue", "anywhere": "tab:green", "random_dirs": "tab:red"}


def _kept(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Records by experiment (real models only), at the rate with the best mean final validation score when an
    experiment has several (the tables' choice rule, on validation only)."""
    by: dict[str, dict[float, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r.get("identity", {}).get("model", {}).get("random_weights") or TASK not in r["test"]["per_task"]:
            continue
        by[r["experiment"]][r["lr"]].append(r)
    out = {}
    for name, per_lr in sorted(by.items()):

        def val(recs: list[dict]) -> float:
            return float(np.mean([x["validation_curve"][-1]["val_matched"] for x in recs]))

        out[name] = sorted(max(per_lr.values(), key=val), key=lambda x: x["seed"])
    return out


def write(records: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    runs = _kept(records)
    if not runs:
        return []
    from experiments.harness import plotstyle

    plt = plotstyle.pyplot()
    written = []
    # 1. residual distance (1 - matched: the share of the planted change still missing), one row per experiment
    # (named on the axis, so no two labels can overlap), one panel per teacher, colour = method
    settings = [t for t in COLORS if any(r[0]["config"]["data"]["setting"] == t for r in runs.values())]
    settings += sorted({r[0]["config"]["data"]["setting"] for r in runs.values()} - set(settings))
    by_setting = {t: sorted(((n, r) for n, r in runs.items() if r[0]["config"]["data"]["setting"] == t),
                            key=lambda nr: (nr[1][0]["param_counts"]["trainable"], nr[0])) for t in settings}  # fmt: skip
    heights = [max(1, len(v)) for v in by_setting.values()]
    fig, axes = plt.subplots(len(settings), 1, figsize=(8, 0.32 * sum(heights) + 1.4 * len(settings)),
                             sharex=True, squeeze=False, gridspec_kw={"height_ratios": heights})  # fmt: skip
    for ax, setting in zip(axes[:, 0], settings, strict=True):
        items = by_setting[setting]
        for y, (_name, recs) in enumerate(items):
            resid = np.array([1 - x["test"]["per_task"][TASK]["matched"] for x in recs])
            ax.errorbar([resid.mean()], [y], xerr=[[resid.mean() - resid.min()], [resid.max() - resid.mean()]],
                        fmt="o", color=plotstyle.method_color(recs[0]["method"]), capsize=3)  # fmt: skip
        ax.set_yticks(range(len(items)), [f"{n} ({plotstyle.count(r[0]['param_counts']['trainable'])})"
                                          for n, r in items], fontsize=8)  # fmt: skip
        ax.set_ylim(len(items) - 0.5, -0.5)
        ax.set_title(f"teacher: {setting}", fontsize=9, loc="left")
        ax.grid(True, axis="x", alpha=0.3)
    axes[-1, 0].set_xlabel(
        "test distance to the teacher / the base model's distance (1 - matched; lower is closer)"
    )
    fig.suptitle("Planted directions: distance to the teacher (mean over seeds, bars: min-max; rows: experiment "
                 "(trainable parameters), colour: method)", fontsize=9)  # fmt: skip
    fig.tight_layout()
    path = out_dir / "distance_vs_params.png"
    plotstyle.save(fig, path)
    written.append(path)

    # 2. recovery per targeted matrix for every LoRA-Dash experiment with a singular-direction teacher
    dash = {n: r for n, r in runs.items() if r[0]["test"]["per_task"][TASK].get("recovery_by_layer")}
    if dash:
        layers = list(next(iter(dash.values()))[0]["test"]["per_task"][TASK]["recovery_by_layer"])
        fig, ax = plt.subplots(figsize=(10, 5))
        x = np.arange(len(layers))
        # experiments with the same choices (dash-only shares LoRA-Dash's launch; both controls sit at 0) would
        # draw one line over another: each gets its own marker and dash pattern and a small sideways offset
        markers, styles = "osD^vP", ("-", "--", ":", "-.")
        for i, (name, recs) in enumerate(dash.items()):
            vals = np.array([[x_["test"]["per_task"][TASK]["recovery_by_layer"][layer] for layer in layers]
                             for x_ in recs])  # fmt: skip
            offset = (i - (len(dash) - 1) / 2) * 0.04
            ax.plot(x + offset, vals.mean(0), marker=markers[i % len(markers)], ms=4, ls=styles[i % len(styles)],
                    label=f"{name} (mean {vals.mean():.2f}, {len(recs)} seeds)")  # fmt: skip
        chance = next(iter(dash.values()))[0]["test"]["per_task"][TASK]["recovery_chance"]
        ax.axhline(chance, color="gray", ls="--", label=f"chance s/n = {chance:.3f}")
        short = [n.replace("encoder.layer.", "L").replace("attention.output.dense", "attn.out")
                 .replace("attention.self.", "").replace("intermediate.dense", "ffn.in")
                 .replace("output.dense", "ffn.out") for n in layers]  # fmt: skip
        ax.set_xticks(x, short, rotation=70, fontsize=7)
        ax.set_ylim(-0.03, 1.03)
        ax.set_ylabel("fraction of the planted directions chosen")
        ax.set_title("Direction recovery per targeted matrix (mean over seeds)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / "recovery_per_layer.png"
        plotstyle.save(fig, path)
        written.append(path)
    return written
