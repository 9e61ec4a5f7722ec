"""Run records: one self-describing JSON per run, written atomically, with provenance."""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import resource
import subprocess
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from experiments.harness.errors import CorruptRecordError, UsageError

SCHEMA_VERSION = 2  # 2: family-declared metrics (`test.score`, per-item `items`), config hash, task
STATUSES = ("complete", "failed", "interrupted")
REQUIRED_FIELDS = {
    "schema_version": int,
    "status": str,
    "family": str,
    "profile": str,
    "experiment": str,
    "method": str,
    "method_params": dict,
    "seed": int,
    "lr": float,
    "config": dict,
    "config_hash": str,
    "provenance": dict,
    "started_at": str,
}
COMPLETE_FIELDS = {
    "param_counts": dict,
    "test": dict,
    "validation_curve": list,
    "best_step": int,
    "wall_time_s": float,
    "peak_memory_mib": float,
    "diagnostics": dict,
}
PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "datasets",
    "lm_eval",
    "scikit_learn",
    "scipy",
    "loradash",
)
REPO_ROOT = Path(__file__).resolve().parents[2]


def lr_tag(lr: float) -> str:
    """A file-name tag that keeps every significant digit: 1e-3 -> "1e-3", 1.5e-3 -> "1.5e-3"."""
    mantissa, exp = f"{lr:.12e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exp)}"


RECORD_NAME = re.compile(r"^seed(\d+)_lr([0-9.]+e-?\d+)\.json$")


def run_path(
    results_dir: str | Path,
    profile: str,
    family: str,
    experiment: str,
    seed: int,
    lr: float,
    task: str | None = None,
) -> Path:
    """results/<profile>/<family>/<experiment>/[<task>/]seed<S>_lr<LR>.json"""
    folder = Path(results_dir) / profile / family / experiment
    if task is not None:
        folder = folder / task
    return folder / f"seed{seed}_lr{lr_tag(lr)}.json"


def iter_records(folder: Path) -> list[Path]:
    """Every run record under `folder` (stale records kept beside them are not records)."""
    return sorted(p for p in folder.glob("**/seed*_lr*.json") if RECORD_NAME.match(p.name))


def write_atomic(path: Path, record: dict[str, Any]) -> None:
    """Write JSON so that a reader never sees a partial file (temp file in the same folder + os.replace)."""
    write_bytes_atomic(path, json.dumps(record, indent=1, sort_keys=True).encode(), suffix=".json")


def write_bytes_atomic(
    path: Path, data: bytes, suffix: str = "", prefix: str = ".tmp-", mode: int | None = None
) -> None:
    """Write a file so that a reader never sees it partial and a full disk leaves the old one whole (temp file
    in the same folder, fsync, os.replace). `mode`: the file's permissions (else the temp file's 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_results_dir(path: Path, *, must_exist: bool = False) -> None:
    """The results folder exists or can be created, and takes a file: checked before anything trains (a run's
    record is written after its training, so an unwritable folder would cost every run of a sweep)."""
    if must_exist and not path.is_dir():
        raise UsageError(f"--results-dir {path}: no such folder (no run records there)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as e:
        raise UsageError(
            f"--results-dir {path}: cannot create or write files there ({e.strerror or e})"
        ) from None


def read_record(path: Path) -> dict[str, Any] | None:
    """A record, or None when the file is absent. A corrupt file is reported, not silently skipped."""
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptRecordError(f"corrupt run record {path}: {e}; move it away to rerun that run") from e
    if not isinstance(rec, dict):
        raise CorruptRecordError(
            f"corrupt run record {path}: not a JSON object; move it away to rerun that run"
        )
    return rec


def validate_record(record: dict[str, Any], primary_metric: str | None = None) -> list[str]:
    """Schema problems of a record (empty when valid). A complete record must carry the family's primary metric
    for every task, with per-item arrays of one length per task."""
    problems = []
    fields = dict(REQUIRED_FIELDS)
    if record.get("status") == "complete":
        fields |= COMPLETE_FIELDS
    for key, tp in fields.items():
        if key not in record:
            problems.append(f"missing {key}")
        elif not isinstance(record[key], tp) or (tp is int and isinstance(record[key], bool)):
            problems.append(f"{key} is {type(record[key]).__name__}, expected {tp.__name__}")
    if record.get("status") not in STATUSES:
        problems.append(f"status {record.get('status')!r} not in {STATUSES}")
    if record.get("status") == "complete":
        test = record.get("test", {})
        for key in ("per_task", "score", "primary_metric", "missing_tasks", "protocol"):
            if key not in test:
                problems.append(f"test.{key} missing")
        metric = primary_metric or test.get("primary_metric")
        if primary_metric and test.get("primary_metric") not in (None, primary_metric):
            problems.append(
                f"test.primary_metric is {test.get('primary_metric')!r}, expected {primary_metric!r}"
            )
        if not test.get("per_task"):
            problems.append("test.per_task is empty")
        for task, r in test.get("per_task", {}).items():
            items = r.get("items")
            if (
                not isinstance(r.get(metric), (int, float))
                or not isinstance(items, dict)
                or "ids" not in items
            ):
                problems.append(f"test.per_task.{task} incomplete (needs {metric}, n and items.ids)")
                continue
            if any(len(v) != r.get("n") for v in items.values()):
                problems.append(f"test.per_task.{task}.items: arrays differ from n={r.get('n')}")
        if not isinstance(test.get("score"), (int, float)) or not math.isfinite(test["score"]):
            problems.append("test.score is not a finite number")
        counts = record.get("param_counts", {})
        for key in ("trainable", "head", "stored", "total_model"):
            if not isinstance(counts.get(key), int):
                problems.append(f"param_counts.{key} missing")
    return problems


# how closely a record's score must equal the one its per-item arrays give (float32 accumulation allowed)
SCORE_RTOL = 1e-5
SCORE_ATOL = 1e-6  # a score near 0 (1 - d/b with d close to b) carries float32 error in absolute terms


def check_record(path: Path, record: dict[str, Any], family: Any) -> list[str]:
    """Every reason not to trust a record read from `path` (empty when none): its schema (`validate_record`), its
    (profile, family, experiment, task, seed, lr) against its path (a record copied into another run's slot), no
    NaN or infinity in its test results or validation curve, and, for a complete record, each task's primary
    metric recomputed from its per-item arrays by the family's own rule and the score from them. `family`: the
    registered family class (its `primary_metric`, `one_task_per_run` and `task_scores`)."""
    import numpy as np

    try:
        problems = validate_record(record, family.primary_metric)
    except (AttributeError, TypeError) as e:  # a section of the wrong type where validate_record looks inside
        return [f"malformed ({type(e).__name__}: {e})"]
    folder, task = path.parent, None
    if family.one_task_per_run:
        task, folder = folder.name, folder.parent
    # The profile is not compared: a profile's records may be copied into another's folder on purpose (the
    # committed `pilot-cola` runs are `cpu` ones); the run they stand for is (family, experiment, task, seed, lr).
    expected = {"experiment": folder.name, "task": task, "family": folder.parent.name}
    for key, want in expected.items():
        if record.get(key) != want:
            problems.append(f"{key} is {record.get(key)!r} but its path says {want!r}")
    name = RECORD_NAME.match(path.name)
    if name and record.get("seed") != int(name[1]):
        problems.append(f"seed is {record.get('seed')!r} but its path says {int(name[1])}")
    if name and (not isinstance(record.get("lr"), float) or lr_tag(record["lr"]) != name[2]):
        problems.append(f"lr is {record.get('lr')!r} but its path says {name[2]}")
    for where, value in _numbers(record.get("test"), "test") if isinstance(record.get("test"), dict) else ():
        if not math.isfinite(value):
            problems.append(f"{where} is {value}")
    for where, value in _numbers(record.get("validation_curve"), "validation_curve"):
        if not math.isfinite(value):
            problems.append(f"{where} is {value}")
    if problems or record.get("status") != "complete":
        return problems
    test, metric = record["test"], family.primary_metric
    per_task = []
    for task_name, r in test["per_task"].items():
        try:
            arrays = {k: np.asarray(v) for k, v in r["items"].items()}
            recomputed = float(family.task_scores(task_name, arrays, np.arange(r["n"])[None, :])[0])
        except (KeyError, TypeError, ValueError, IndexError) as e:
            problems.append(
                f"test.per_task.{task_name}: its items cannot be scored ({type(e).__name__}: {e})"
            )
            continue
        # float32 tolerance: a metric summed in float32 by the run (planted's distances) and recomputed here in
        # float64 differs by ~1e-7; an edited item or score moves it by at least one item's share (>= 1e-4 here)
        if not math.isclose(recomputed, r[metric], rel_tol=SCORE_RTOL, abs_tol=SCORE_ATOL):
            problems.append(
                f"test.per_task.{task_name}.{metric} is {r[metric]!r} but its items give {recomputed!r}"
            )
        per_task.append(r[metric])
    if per_task and not problems:
        mean = sum(per_task) / len(per_task)  # unweighted over tasks, as train.py computes it
        if not math.isclose(mean, test["score"], rel_tol=SCORE_RTOL, abs_tol=SCORE_ATOL):
            problems.append(f"test.score is {test['score']!r} but its tasks give {mean!r}")
    return problems


def _numbers(value: Any, where: str) -> Iterator[tuple[str, float]]:
    """(location, number) of every float inside `value` (nested dicts and lists)."""
    if isinstance(value, float):
        yield where, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _numbers(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _numbers(v, f"{where}[{i}]")


def utc_stamp() -> str:
    """A UTC time for a file name: 20250101T120000.123456Z."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")


def set_aside(path: Path, suffix: str) -> Path:
    """Move the record at `path` to `<name>.<suffix>` beside it, never over an existing file (`<suffix>-2`,
    `-3`, ... when the name is taken: a config flipped A -> B -> A -> B sets aside two records of one hash)."""
    n = 1
    while True:
        dest = path.with_name(f"{path.name}.{suffix}" + (f"-{n}" if n > 1 else ""))
        try:
            os.link(path, dest)  # fails if `dest` exists, where a rename would replace it
        except FileExistsError:
            n += 1
            continue
        path.unlink()
        return dest


@cache
def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def git_state() -> dict[str, Any]:
    """The commit, and whether any file of the project differs from it (untracked files included; generated
    results are not code)."""
    commit = _git("rev-parse", "HEAD") or None
    status = _git("status", "--porcelain", "--untracked-files=all", "--", ".", ":(exclude)results")
    return {"commit": commit, "dirty": bool(status) if commit else None}


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def hardware() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def provenance(protocol_version: str) -> dict[str, Any]:
    return {
        "git": git_state(),
        "packages": package_versions(),
        "hardware": hardware(),
        "python": platform.python_version(),
        "protocol_version": protocol_version,
    }


def peak_memory_mib() -> float:
    """Peak resident memory of this process (and GPU peak when there is one)."""
    import torch

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    if torch.cuda.is_available():
        return max(rss, torch.cuda.max_memory_allocated() / 2**20)
    return rss


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def model_identity(name: str, path: str) -> dict[str, Any]:
    """A model's identity for a record: hub ids by name; local folders by content (sharded giants: names only)."""
    local = Path(path)
    weights = sorted(local.glob("*.safetensors")) if local.is_dir() else []
    return {
        "name": name,
        "path": path,
        "weights_sha256": {p.name: file_sha256(p) for p in weights} if len(weights) <= 2 else "sharded",
    }
