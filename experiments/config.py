"""Typed, validated experiment configs: family defaults + profile override + experiment override.

A family folder (`experiments/<family>/`) holds `defaults.yaml`, `profiles.yaml` and one folder per
experiment with an `experiment.yaml` (`method:` plus a sparse `overrides:`). Every layer is checked against
the schema before merging, so an unknown key or a wrong type is reported with the file that holds it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

EXPERIMENTS_ROOT = Path(__file__).resolve().parent


class ConfigError(ValueError):
    """A config problem, naming the file and the key."""

    def __init__(self, source: str | Path, key: str, problem: str):
        super().__init__(f"{source}: {key}: {problem}")
        self.source, self.key, self.problem = str(source), key, problem


@dataclass(frozen=True)
class ModelConfig:
    name: str = (
        "embedded:all-MiniLM-L6-v2"  # "embedded:..." = shipped in a PyPI package; else a path or hub id
    )
    kind: Literal["multiple_choice", "causal_lm"] = "multiple_choice"
    target_modules: tuple[str, ...] = ("query", "key", "value", "dense")
    modules_to_save: tuple[str, ...] = ("classifier",)
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    tokenizer: str | None = None  # None: the model's own
    gradient_checkpointing: bool = False


@dataclass(frozen=True)
class DataConfig:
    data_dir: str | None = None  # None: LORADASH_DATA_DIR, else ../shared/data/commonsense
    train_file: str | None = None  # a mixed LLM-Adapters file (commonsense_170k.json); None: train_tasks
    train_tasks: tuple[str, ...] = ("boolq", "ARC-Easy", "ARC-Challenge", "openbookqa")
    eval_tasks: tuple[str, ...] = (
        "boolq", "piqa", "social_i_qa", "hellaswag", "winogrande", "ARC-Easy", "ARC-Challenge", "openbookqa",
    )  # fmt: skip
    train_examples: int | None = None  # subset of the training mix (after the validation split); None = all
    val_examples: int = 200  # carved out of the training data, never from a test set
    test_examples_per_task: int | None = None  # fixed random subset of each test set; None = all
    max_seq_len: int = 64  # multiple choice: tokens per (question, choice) pair
    split_seed: int = 42  # the same subsets and validation split for every method and seed
    # causal LM (paper protocol): Alpaca prompt template for training, cutoff, loss on the prompt too
    prompt_template: Literal["train", "eval"] = "train"
    cutoff_len: int = 256
    train_on_inputs: bool = True


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int | None = 300  # optimizer steps; null when `epochs` is set
    epochs: int | None = None  # alternatively: passes over the training data (the paper: 3)
    batch_size: int = 8  # examples per optimizer step (split over grad_accum micro-batches)
    grad_accum: int = 1
    lr: float = 1e-3  # overridden by the sweep's learning-rate grid
    weight_decay: float = 0.0
    warmup_steps: int = 30
    schedule: Literal["linear", "constant"] = "linear"
    max_grad_norm: float | None = 1.0
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    eval_every: int = 100  # optimizer steps between validations (and at the end)
    eval_batch_size: int = 32
    selection_metric: Literal["val_accuracy", "val_loss"] = "val_accuracy"
    num_threads: int | None = None  # torch CPU threads; None = torch's default


@dataclass(frozen=True)
class EvalConfig:
    """How the test sets are scored (causal LMs; multiple-choice models always use argmax scoring)."""

    protocols: tuple[Literal["generation", "loglikelihood"], ...] = ("generation",)
    num_beams: int = 4
    max_new_tokens: int = 32
    greedy: bool = False
    batch_size: int = 16
    prompt_template: Literal["train", "eval"] = "eval"
    reference_extraction: bool = False  # True: the reference's case-sensitive substring matching
    loglikelihood_limit: int | None = None  # lm-eval items per task (None = all)


@dataclass(frozen=True)
class MethodConfig:
    name: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExperimentConfig:
    family: str
    name: str
    method: MethodConfig
    model: ModelConfig
    data: DataConfig
    train: TrainConfig
    eval: EvalConfig = EvalConfig()
    sources: tuple[str, ...] = ()  # files that produced this config, in merge order

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
}


def _check_type(value: Any, tp: Any) -> bool:
    origin = get_origin(tp)
    if tp is Any:
        return True
    if origin is Literal:
        return value in get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_check_type(value, a) for a in get_args(tp))
    if tp is type(None):
        return value is None
    if origin is tuple:
        return isinstance(value, (list, tuple)) and all(_check_type(v, get_args(tp)[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _resolve_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_layer(
    layer: Any, source: str | Path, *, allowed_sections: tuple[str, ...] = tuple(SECTIONS)
) -> None:
    """Validate one sparse override layer (a dict of sections) against the schema."""
    if layer is None:
        return
    if not isinstance(layer, dict):
        raise ConfigError(source, "overrides", f"must be a mapping of sections, got {type(layer).__name__}")
    for section, values in layer.items():
        if section not in allowed_sections:
            raise ConfigError(source, section, f"unknown section (known: {', '.join(allowed_sections)})")
        if not isinstance(values, dict):
            raise ConfigError(source, section, "must be a mapping")
        hints = _resolve_hints(SECTIONS[section])
        for key, value in values.items():
            if key not in hints:
                raise ConfigError(
                    source, f"{section}.{key}", f"unknown key (known: {', '.join(sorted(hints))})"
                )
            if not _check_type(value, hints[key]):
                raise ConfigError(source, f"{section}.{key}", f"expected {hints[key]}, got {value!r}")


def merge(*layers: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for layer in layers:
        for section, values in (layer or {}).items():
            out[section].update(values)
    return out


def _build(section: str, values: dict[str, Any]) -> Any:
    cls = SECTIONS[section]
    hints = _resolve_hints(cls)
    kwargs = {
        k: tuple(v) if get_origin(hints[k]) is tuple and v is not None else v for k, v in values.items()
    }
    return cls(**kwargs)


def validate_values(cfg: ExperimentConfig, origin: dict[str, str]) -> None:
    """Checks of values (not types) on the merged config; errors name the file that set the key."""
    t, d = cfg.train, cfg.data

    def src(key: str) -> str:
        return origin.get(key, origin.get("<experiment>", "<config>"))

    if (t.max_steps is None) == (t.epochs is None):
        raise ConfigError(src("train.epochs"), "train.max_steps", "set exactly one of max_steps and epochs")
    positive = {
        "train.max_steps" if t.max_steps is not None else "train.epochs": t.max_steps or t.epochs or 0,
        "train.batch_size": t.batch_size,
        "train.grad_accum": t.grad_accum,
        "train.eval_every": t.eval_every,
        "train.eval_batch_size": t.eval_batch_size,
        "data.max_seq_len": d.max_seq_len,
        "data.val_examples": d.val_examples,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(src(key), key, f"must be >= 1, got {value}")
    if t.lr <= 0:
        raise ConfigError(src("train.lr"), "train.lr", f"must be > 0, got {t.lr}")
    if t.batch_size % t.grad_accum:
        raise ConfigError(
            src("train.grad_accum"),
            "train.batch_size",
            f"{t.batch_size} is not divisible by grad_accum={t.grad_accum}",
        )
    if t.warmup_steps < 0 or t.weight_decay < 0:
        raise ConfigError(src("train.warmup_steps"), "train", "warmup_steps and weight_decay must be >= 0")
    for key in ("train_examples", "test_examples_per_task"):
        v = getattr(d, key)
        if v is not None and v < 1:
            raise ConfigError(src(f"data.{key}"), f"data.{key}", f"must be >= 1 or null, got {v}")
    if not d.eval_tasks:
        raise ConfigError(src("data.eval_tasks"), "data.eval_tasks", "must name at least one task")
    if not cfg.model.target_modules and cfg.method.name != "full":
        raise ConfigError(
            src("model.target_modules"), "model.target_modules", "an adapter method needs target modules"
        )


def read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(path, "<yaml>", f"not valid YAML: {e}") from e


def family_dir(family: str) -> Path:
    d = EXPERIMENTS_ROOT / family
    if not (d / "defaults.yaml").is_file():
        known = sorted(p.name for p in EXPERIMENTS_ROOT.iterdir() if (p / "defaults.yaml").is_file())
        raise ValueError(f"unknown experiment family {family!r} (known: {', '.join(known)})")
    return d


def list_experiments(family: str) -> list[str]:
    return sorted(p.parent.name for p in family_dir(family).glob("*/experiment.yaml"))


def load_experiment(family: str, name: str, *, profile_overrides: dict[str, Any] | None = None,
                    profile_source: str = "<profile>",
                    method_overrides: dict[str, dict[str, Any]] | None = None) -> ExperimentConfig:  # fmt: skip
    """defaults.yaml <- profile overrides <- <experiment>/experiment.yaml overrides, validated."""
    fdir = family_dir(family)
    defaults_path = fdir / "defaults.yaml"
    defaults = read_yaml(defaults_path) or {}
    check_layer(defaults, defaults_path)
    check_layer(profile_overrides, profile_source)
    exp_path = fdir / name / "experiment.yaml"
    if not exp_path.is_file():
        raise ValueError(f"unknown experiment {family}/{name} (known: {', '.join(list_experiments(family))})")
    exp = read_yaml(exp_path) or {}
    if not isinstance(exp, dict):
        raise ConfigError(exp_path, "<root>", "must be a mapping with 'method' and optional 'overrides'")
    unknown = set(exp) - {"method", "overrides", "description"}
    if unknown:
        raise ConfigError(exp_path, sorted(unknown)[0], "unknown key (known: method, overrides, description)")
    method = exp.get("method")
    if not isinstance(method, dict) or not isinstance(method.get("name"), str):
        raise ConfigError(exp_path, "method", "must be a mapping with a string 'name'")
    check_layer(exp.get("overrides"), exp_path)
    merged = merge(defaults, profile_overrides, exp.get("overrides"))
    origin = {"<experiment>": str(exp_path)}
    for layer, source in (
        (defaults, defaults_path),
        (profile_overrides, profile_source),
        (exp.get("overrides"), exp_path),
    ):
        for section, values in (layer or {}).items():
            origin |= {f"{section}.{k}": str(source) for k in values}
    try:
        sections = {s: _build(s, v) for s, v in merged.items()}
    except (TypeError, ValueError) as e:
        raise ConfigError(exp_path, "<merged>", str(e)) from e
    params = {k: v for k, v in method.items() if k != "name"}
    params |= (method_overrides or {}).get(method["name"], {})
    cfg = ExperimentConfig(
        family=family,
        name=name,
        method=MethodConfig(name=method["name"], params=params),
        sources=(str(defaults_path), profile_source, str(exp_path)),
        **sections,
    )
    validate_values(cfg, origin)
    return cfg


def with_overrides(cfg: ExperimentConfig, **sections: dict[str, Any]) -> ExperimentConfig:
    """A copy with some section fields replaced (used for the sweep's learning rate)."""
    changes = {s: dataclasses.replace(getattr(cfg, s), **v) for s, v in sections.items()}
    return dataclasses.replace(cfg, **changes)
