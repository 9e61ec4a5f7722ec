"""The TSD analysis's report (experiments/analysis/tsd.py): analysis.md's sections and the plots (matplotlib Agg, PNGs
without version or time stamps), from the numbers analysis.json holds, so the same numbers give the same bytes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

BINS = 20  # histogram bins of the spectrum positions
EDGE = 0.1  # "top 10%" / "bottom 10%" of the spectrum


# -- helpers ----------------------------------------------------------------------------------------------------
def _pyplot():  # Agg, chosen before pyplot is imported: no display needed
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, top: float = 1.0) -> None:
    from experiments.harness import plotstyle

    fig.tight_layout(rect=(0, 0, 1, top))
    plotstyle.save(fig, path)  # cropped to its content; no version or time stamp: same bytes on rerun


def plot_positions(pos: Mapping[str, Any], path: Path, title: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    h = pos["histogram"]
    edges = np.array(h["edges"])
    ax.bar(
        edges[:-1],
        np.array(h["counts"]) / pos["n"],
        width=np.diff(edges),
        align="edge",
        edgecolor="k",
        lw=0.5,
    )
    ax.axhline(1 / BINS, color="grey", ls=":", lw=0.8, label="uniform")
    ax.axvspan(0, EDGE, color="tab:green", alpha=0.1, label=f"top 10%: {pos['top10']:.2f}")
    ax.axvspan(1 - EDGE, 1, color="tab:red", alpha=0.1, label=f"bottom 10%: {pos['bottom10']:.2f}")
    ax.set_xlim(0, 1)
    ax.set_xlabel(
        "position of the chosen direction in the singular spectrum ((i + 1/2) / min(out, in); 0 = largest)"
    )
    ax.set_ylabel("fraction of chosen directions")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7)
    _save(fig, path)


def plot_lambda(choices: Sequence[Any], path: Path, title: str) -> None:
    """|lambda| against sigma, log x (and log y when no lambda is exactly 0), with the line |lambda| = sigma drawn
    inside the data's range only (the dash term outweighs the pretrained direction above it)."""
    plt = _pyplot()
    pts = np.array(
        [(s, abs(x)) for c in choices if c.lam is not None for s, x in zip(c.sigma, c.lam, strict=True)]
    )
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.scatter(pts[:, 0], pts[:, 1], s=6, alpha=0.6)
    ax.set_xscale("log")
    if pts[:, 1].min() > 0:
        ax.set_yscale("log")
    xlim, ylim = ax.get_xlim(), ax.get_ylim()
    lo, hi = max(xlim[0], ylim[0]), min(xlim[1], ylim[1])
    if lo < hi:
        ax.plot([lo, hi], [lo, hi], "k:", lw=0.8, label="|lambda| = sigma")
        ax.legend(fontsize=7)
    ax.set_xlim(xlim)
    ax.set_ylim(ylim)
    ax.set_xlabel("sigma of the chosen direction")
    ax.set_ylabel("|lambda| at the end of training")
    ax.set_title(title, fontsize=8)
    _save(fig, path)


def plot_prediction(pred: Mapping[str, Any], path: Path, title: str, keys: Sequence[str]) -> None:
    """One panel per score in `keys`: the mean over layers against t, one line per rank."""
    plt = _pyplot()
    from matplotlib.ticker import NullLocator

    summ = pred["summary"]
    ts = sorted({row["t"] for row in summ["by_rank_t"]})
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.4), squeeze=False)
    ranks = sorted({row["rank"] for row in summ["by_rank_t"]})
    for ax, key in zip(axes[0], keys, strict=True):
        for rank in ranks:
            rows = [row for row in summ["by_rank_t"] if row["rank"] == rank]
            ax.plot(
                [row["t"] for row in rows], [row[key] for row in rows], marker="o", label=f"LoRA r={rank}"
            )
        ax.axhline(summ["chance"][key], color="grey", ls=":", lw=0.8, label="chance")
        ax.axhline(
            summ["smallest_sigma_control"][key], color="tab:red", ls="--", lw=0.8, label="s smallest sigma"
        )
        ax.set_xscale("log")
        ax.set_xticks(ts, [str(t) for t in ts])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("t (LoRA steps before the choice)")
        ax.set_title(f"{key} (s = {summ['s']})", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean over layers")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title, fontsize=8)
    _save(fig, path)


def plot_spectrum(pred: Mapping[str, Any], path: Path, title: str) -> None:
    plt = _pyplot()
    spectra = pred["spectra"]
    fig, axes = plt.subplots(len(spectra), 1, figsize=(7, 2.6 * len(spectra)), squeeze=False)
    markers = ["v", "^", "s", "D", "P"]
    for ax, (name, sp) in zip(axes[:, 0], spectra.items(), strict=True):
        rates = np.maximum(np.array(sp["full_rates"]), 1e-30)
        idx = np.arange(rates.size)
        ax.plot(idx, rates, color="k", lw=0.7, label="full FT change rate")
        ax.scatter(
            sp["full_top"],
            rates[sp["full_top"]],
            s=30,
            facecolors="none",
            edgecolors="k",
            label="full FT top s",
        )
        for j, (label, picks) in enumerate(sp["lora_top"].items()):
            ax.scatter(picks, rates[picks], s=14, marker=markers[j % len(markers)],
                       label=f"LoRA {label} choice (t = {pred['reference_t']})")  # fmt: skip
        ax.set_yscale("log")
        ax.set_xlabel("index i of the singular direction (descending sigma)")
        ax.set_ylabel("|u_i^T dW* v_i| / sigma_i")
        ax2 = ax.twinx()
        ax2.plot(idx, sp["sigma"], color="tab:grey", lw=0.6, ls="--")
        ax2.set_ylabel("sigma_i (dashed)", color="tab:grey", fontsize=7)
        ax.set_title(name, fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="upper center", ncol=len(labels), bbox_to_anchor=(0.5, 0.97))
    fig.suptitle(title, fontsize=8)
    _save(fig, path, top=0.95)


# -- the markdown report -----------------------------------------------------------------------------------------------
def _f(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _reading(pos: Mapping[str, Any]) -> str:
    """A plain reading of the position numbers against the paper's "small but not the smallest sigma"."""
    if pos["top10"] >= 0.5:
        return "mostly among the largest singular values (top 10%), not at small sigma as in the paper"
    if pos["bottom10"] >= 0.5 and pos["smallest_s"] >= 0.25:
        return (
            f"at the very bottom of the spectrum ({pos['smallest_s']:.0%} among the s smallest singular values "
            "of their layer): the paper's 'small but not the smallest sigma' does not describe these runs"
        )
    if pos["bottom10"] >= 0.5 or 0.5 <= pos["median"]:
        return "at small sigma but mostly not the very smallest, as the paper describes"
    return "spread over the spectrum, with no concentration at small sigma"


def records_section(records: Sequence[Mapping[str, Any]], pos: Mapping[str, Any], lam: Mapping[str, Any],
                    stab: Sequence[Mapping[str, Any]]) -> list[str]:  # fmt: skip
    """The record-based part of analysis.md (rows of analysis.json's "records")."""
    lines = ["## Records", ""]
    if not records:
        return lines + ["No complete LoRA-Dash record in this folder: nothing to analyse from records.", ""]
    lines += ["| record | experiment | task | seed | lr | launched layers | not launched | lambda recorded |",
              "|---|---|---|---:|---:|---:|---:|---|"]  # fmt: skip
    for r in records:
        lines.append(f"| {r['path']} | {r['experiment']} | {r['task'] or '-'} | {r['seed']} | {r['lr']:g} | "
                     f"{r['launched_layers']} | {r['unlaunched_layers']} | {'yes' if r['lambda_recorded'] else 'no'} |")  # fmt: skip
    lines += ["", "## Where the chosen directions sit in the singular spectrum", ""]
    if pos["n"]:
        lines += [
            "Position of direction i of a layer with k = min(out, in) directions: (i + 1/2) / k, 0 = the largest "
            "sigma. The paper: task-specific directions sit at small but not the smallest sigma.",
            "",
            f"- {pos['n']} chosen directions (all launched layers of all runs above).",
            f"- in the top 10% of the spectrum: {_f(pos['top10'])} (uniform: 0.100); in the bottom 10%: "
            f"{_f(pos['bottom10'])} (uniform: 0.100).",
            f"- among the s smallest singular values of their layer: {_f(pos['smallest_s'])} (uniform: "
            f"{_f(pos['smallest_s_chance'])}); median position {_f(pos['median'])}.",
            f"- Reading: {_reading(pos)}.",
            "",
            "![positions](positions.png)",
            "",
        ]
    lines += ["## |lambda| against sigma at the end of training", ""]
    if lam["n"]:
        rho = lam.get("spearman_sigma_abs_lambda")
        lines += [
            f"- {lam['n']} directions; median |lambda| {lam['median_abs_lambda']:.3g}, max {lam['max_abs_lambda']:.3g}; "
            f"Spearman correlation of sigma and |lambda|: {_f(rho)}.",
            f"- median |lambda| / sigma (the dash term's own change rate of its direction): "
            f"{lam['median_relative_change']:.3g}; |lambda| > sigma for {_f(lam['fraction_lambda_above_sigma'])} of them.",
            "",
            "![lambda against sigma](lambda_sigma.png)",
            "",
        ]
    else:
        lines += ["No record stores lambda (records written before it was recorded): not measured.", ""]
    lines += ["## Stability across seeds", "",
              "Per layer, the mean over pairs of seeds (same experiment, task and learning rate) of the Jaccard "
              "overlap |A & B| / |A | B| and of the shared fraction |A & B| / s of the chosen index sets, then the "
              "mean over layers. Chance: two independent uniform choices of s of k directions (shared: s/k; "
              "Jaccard: the hypergeometric expectation).", ""]  # fmt: skip
    if stab:
        lines += ["| experiment | task | lr | seeds | layers | Jaccard | chance | shared | chance |",
                  "|---|---|---:|---|---:|---:|---:|---:|---:|"]  # fmt: skip
        for g in stab:
            lines.append(f"| {g['experiment']} | {g['task'] or '-'} | {g['lr']:g} | {', '.join(map(str, g['seeds']))} | "
                         f"{g['layers']} | {_f(g['jaccard'])} | {_f(g['chance_jaccard'])} | {_f(g['shared'])} | "
                         f"{_f(g['chance_shared'])} |")  # fmt: skip
        lines.append("")
    else:
        lines += ["No experiment has two seeds at one learning rate: not measured.", ""]
    return lines


def prediction_section(pred: Mapping[str, Any] | None, scores: Mapping[str, str]) -> list[str]:
    """The probe's part of analysis.md; `scores` names and defines the prediction scores."""
    lines = ["## Does a short LoRA run predict the directions full fine-tuning changes most?", ""]
    if pred is None:
        return lines + [
            "Not run: it trains (`analyze(..., train=True)`); its result is kept in prediction.json.",
            "",
        ]
    st, cfg, summ = pred["settings"], pred["config"], pred["summary"]
    s = summ["s"]
    lines += [
        f"Probe on `{cfg['experiment']}`'s model ({cfg['model']}), task {cfg['task'] or '-'}, seed {st['seed']}: full "
        f"fine-tuning of every weight for {st['full_steps']} steps at lr {st['full_lr']:g} gives dW* per target layer; "
        f"LoRA at ranks {', '.join(map(str, st['ranks']))} (alpha = 2r) trains at lr {st['lora_lr']:g}, and after "
        f"t = {', '.join(map(str, st['snapshots']))} steps of the same run the s = {s} directions LoRA-Dash would "
        f"launch on are read from its update (change rate with eps = {st['eps']:g}). Both rankings use the same SVD "
        "of the pretrained W. A short full fine-tuning run stands in for the paper's task-optimal W*.",
        "",
        "| run | first loss | mean loss, last 10% of steps | validation |",
        "|---|---:|---:|---|",
    ]
    for run, t in sorted(pred["training"].items()):
        val = ", ".join(
            f"{k} {v:.4g}"
            for k, v in sorted(t.items())
            if k not in ("first_loss", "last_10pct_loss", "steps")
        )
        lines.append(
            f"| {run} ({t['steps']} steps) | {t['first_loss']:.4f} | {t['last_10pct_loss']:.4f} | {val} |"
        )
    lines += ["", "Scores per layer (L_s: LoRA's top s; F_m: full fine-tuning's top m by change rate; k = min(out, in)), "
              "averaged over the target layers:", ""]  # fmt: skip
    lines += [f"- `{key}`: {text}" for key, text in scores.items()]
    lines += ["", "| rank | t | " + " | ".join(scores) + " |", "|---:|---:|" + "---:|" * len(scores)]
    for row in summ["by_rank_t"]:
        lines.append(f"| {row['rank']} | {row['t']} | " + " | ".join(_f(row[k]) for k in scores) + " |")
    for label, vals in (
        ("chance", summ["chance"]),
        ("s smallest sigma (control)", summ["smallest_sigma_control"]),
    ):
        lines.append(f"| {label} | | " + " | ".join(_f(vals[k]) for k in scores) + " |")
    fpos = summ["full_top_s_positions"]
    rows, control = summ["by_rank_t"], summ["smallest_sigma_control"]
    lines += [
        "",
        "The control picks the s directions of smallest sigma, what 1/sigma alone would choose: LoRA adds "
        "information only where it beats this row.",
        "",
        *[
            f"- `{key}`: LoRA's choice beats the control at {sum(row[key] > control[key] for row in rows)} of "
            f"{len(rows)} (rank, t); best {max(row[key] for row in rows):.3f} against {control[key]:.3f}."
            for key in scores
        ],
        "",
        f"Where full fine-tuning's own top s sit: top 10% {_f(fpos['top10'])}, bottom 10% {_f(fpos['bottom10'])}, "
        f"among the s smallest {_f(fpos['smallest_s'])}, median position {_f(fpos['median'])}.",
        "",
        "![prediction quality](prediction.png)",
        "",
        f"Change-rate spectra of dW* for a few layers, with the directions LoRA picks at t = {pred['reference_t']}:",
        "",
        "![change-rate spectra](spectrum.png)",
        "",
    ]
    return lines
