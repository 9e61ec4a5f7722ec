"""GLUE metrics, exactly as GLUE reports them.

CoLA: Matthews correlation; STS-B: Pearson and Spearman correlation (GLUE's score: their mean); MRPC and QQP:
F1 of the positive class and accuracy (their mean); the others: accuracy. `task_metrics` computes them with
scikit-learn and scipy. The bootstrap recomputes a task's score on thousands of resamples, where
scikit-learn's per-call validation (~3 ms) would take minutes, so `batch_scores` computes the same formulas
over a [B, n] matrix of resampled indices at once; tests check it against `task_metrics` to 1e-9.
A constant prediction has no defined correlation; both paths score it 0 (what a trivial predictor earns).
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from experiments.glue.data import spec


def _nan_to_zero(x: float) -> float:
    return 0.0 if x is None or math.isnan(x) else float(x)


def task_metrics(task: str, labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """Every metric GLUE reports for `task`, plus `glue_score` (the one number GLUE averages)."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    kind = spec(task).metric
    y, p = np.asarray(labels), np.asarray(predictions)
    if kind == "pearson_spearman":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # constant input: correlation undefined (scored 0)
            pearson = _nan_to_zero(pearsonr(p, y).statistic) if len(y) > 1 else 0.0
            spearman = _nan_to_zero(spearmanr(p, y).statistic) if len(y) > 1 else 0.0
        return {"pearson": pearson, "spearman": spearman, "glue_score": (pearson + spearman) / 2}
    acc = float(accuracy_score(y, p))
    if kind == "mcc":
        mcc = float(matthews_corrcoef(y, p))
        return {"mcc": mcc, "accuracy": acc, "glue_score": mcc}
    if kind == "f1_accuracy":
        f1 = float(f1_score(y, p, zero_division=0.0))
        return {"f1": f1, "accuracy": acc, "glue_score": (f1 + acc) / 2}
    return {"accuracy": acc, "glue_score": acc}


def _rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    den = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(axis=1) / den
    return np.where(den > 0, r, 0.0)


def batch_scores(task: str, labels: np.ndarray, predictions: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """`glue_score` of each resample: idx [B, n] indexes the items; returns [B]."""
    from scipy.stats import rankdata

    kind = spec(task).metric
    y, p = np.asarray(labels)[idx], np.asarray(predictions)[idx]  # [B, n]
    if kind == "pearson_spearman":
        pearson = _rowwise_pearson(p.astype(float), y.astype(float))
        spearman = _rowwise_pearson(rankdata(p, axis=1), rankdata(y, axis=1))
        return (pearson + spearman) / 2
    acc = (y == p).mean(axis=1)
    if kind == "mcc":
        return _batch_mcc(y, p, spec(task).num_labels)
    if kind == "f1_accuracy":
        tp = ((y == 1) & (p == 1)).sum(axis=1)
        fp = ((y != 1) & (p == 1)).sum(axis=1)
        fn = ((y == 1) & (p != 1)).sum(axis=1)
        den = 2 * tp + fp + fn
        f1 = np.where(den > 0, 2 * tp / np.maximum(den, 1), 0.0)
        return (f1 + acc) / 2
    return acc


def _batch_mcc(y: np.ndarray, p: np.ndarray, k: int) -> np.ndarray:
    """Matthews correlation (Gorodkin's K-class form, as scikit-learn) of each row."""
    n = y.shape[1]
    t_k = np.stack([(y == c).sum(axis=1) for c in range(k)], axis=1).astype(float)  # [B, k] true counts
    p_k = np.stack([(p == c).sum(axis=1) for c in range(k)], axis=1).astype(float)  # [B, k] predicted
    c = (y == p).sum(axis=1).astype(float)
    cov_ytyp = c * n - (t_k * p_k).sum(axis=1)
    cov_ypyp = n * n - (p_k * p_k).sum(axis=1)
    cov_ytyt = n * n - (t_k * t_k).sum(axis=1)
    den = cov_ytyt * cov_ypyp
    with np.errstate(invalid="ignore", divide="ignore"):
        mcc = cov_ytyp / np.sqrt(den)
    return np.where(den > 0, mcc, 0.0)
