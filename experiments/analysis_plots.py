"""Plots of the TSD analysis (experiments/analysis.py): matplotlib Agg, PNGs without version or time stamps, so
that the same numbers give the same bytes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

BINS = 20  # histogram bins of the spectrum positions
EDGE = 0.1  # "top 10%" / "bottom 10%" of the spectrum


# -- helpers ----------------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})  # no version or time stamp: same bytes on rerun
    _pyplot().close(fig)


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
    plt = _pyplot()
    pts = np.array(
        [(s, abs(x)) for c in choices if c.lam is not None for s, x in zip(c.sigma, c.lam, strict=True)]
    )
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.scatter(pts[:, 0], pts[:, 1], s=6, alpha=0.6)
    lo, hi = float(pts[:, 0].min()), float(pts[:, 0].max())
    ax.plot([lo, hi], [lo, hi], "k:", lw=0.8, label="|lambda| = sigma")
    ax.set_xscale("log")
    ax.set_xlabel("sigma of the chosen direction")
    ax.set_ylabel("|lambda| at the end of training")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7)
    _save(fig, path)


def plot_prediction(pred: Mapping[str, Any], path: Path, title: str) -> None:
    plt = _pyplot()
    summ = pred["summary"]
    keys = list(summ["chance"])  # the scores, in the order the analysis defines them
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
        ax.legend(fontsize=6, loc="upper left")
    fig.suptitle(title, fontsize=8)
    _save(fig, path)
