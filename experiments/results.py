"""Run records: one self-describing JSON per run, written atomically, with provenance."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import resource
import subprocess
import tempfile
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
PROTOCOL_VERSION = "commonsense-mc-v1"
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
PACKAGES = ("torch", "transformers", "peft", "accelerate", "datasets", "lm_eval", "loradash")
REPO_ROOT = Path(__file__).resolve().parent.parent


def lr_tag(lr: float) -> str:
    return f"{lr:.0e}".replace("e-0", "e-").replace("e+0", "e+")


def run_path(
    results_dir: str | Path, profile: str, family: str, experiment: str, seed: int, lr: float
) -> Path:
    return Path(results_dir) / profile / family / experiment / f"seed{seed}_lr{lr_tag(lr)}.json"


def write_atomic(path: Path, record: dict[str, Any]) -> None:
    """Write JSON so that a reader never sees a partial file (temp file in the same folder + os.replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_record(path: Path) -> dict[str, Any] | None:
    """A record, or None when the file is absent. A corrupt file is reported, not silently skipped."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"corrupt run record {path}: {e}; delete it to rerun that run") from e


def validate_record(record: dict[str, Any]) -> list[str]:
    """Schema problems of a record (empty when valid)."""
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
        for key in ("per_task", "mean_accuracy", "missing_tasks"):
            if key not in test:
                problems.append(f"test.{key} missing")
        for task, r in test.get("per_task", {}).items():
            if not {"accuracy", "n", "correct"} <= set(r) or len(r["correct"]) != r["n"]:
                problems.append(f"test.per_task.{task} incomplete")
        counts = record.get("param_counts", {})
        for key in ("trainable", "head", "stored", "total_model"):
            if not isinstance(counts.get(key), int):
                problems.append(f"param_counts.{key} missing")
    return problems


@cache
def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def git_state() -> dict[str, Any]:
    commit = _git("rev-parse", "HEAD") or None
    status = _git(
        "status", "--porcelain", "--untracked-files=no", "--", "loradash", "baselines", "experiments"
    )
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


def provenance() -> dict[str, Any]:
    return {
        "git": git_state(),
        "packages": package_versions(),
        "hardware": hardware(),
        "python": platform.python_version(),
        "protocol_version": PROTOCOL_VERSION,
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
