"""Profiles pick the scale of a family's sweep: which experiments, seeds, learning-rate grid, overrides."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from baselines import available_methods
from experiments.harness.config import (
    ConfigError,
    ExperimentConfig,
    check_layer,
    family_dir,
    list_experiments,
    load_experiment,
    read_yaml,
    sections_for,
)
from experiments.harness.registry import get_family

PROFILE_KEYS = {
    "description",
    "overrides",
    "method_overrides",
    "experiments",
    "seeds",
    "tune_seeds",
    "lr_grid",
    "jobs",
    "tasks",
    "verify",
    "every_method",
}


@dataclass(frozen=True)
class Profile:
    """Args:
    experiments: the experiment folders this profile runs.
    tune_seeds: seeds run over the whole learning-rate grid; the rate with the best mean validation metric
        over them is chosen per experiment (never a test metric).
    seeds: seeds reported in the tables, all at the chosen rate (tune seeds are reused, not rerun).
    lr_grid: experiment or method name -> grid (an experiment's entry wins over its method's, e.g. a smaller
        grid for a larger rank); "default" for the rest; the word "config" instead of a list means
        the experiment's own `train.lr` (a fixed protocol such as the paper's).
    method_overrides: method name -> hyper-parameters replaced at this scale (e.g. LoRA-Dash's t for smoke).
    jobs: runs executed in parallel (each in its own process).
    tasks: one-task-per-run families (GLUE): task -> its overrides (a sparse config layer, may be empty);
        every experiment runs on every task, and the learning rate is chosen per (experiment, task).
    """

    family: str
    name: str
    description: str
    overrides: dict[str, Any]
    experiments: tuple[str, ...]
    seeds: tuple[int, ...]
    tune_seeds: tuple[int, ...]
    lr_grid: dict[str, tuple[float, ...] | str] = field(default_factory=dict)
    method_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    jobs: int = 1
    tasks: dict[str, dict[str, Any]] | None = None
    verify: tuple[str, ...] = ()  # experiments `verify` reruns first (e.g. one LoRA-Dash, one LoRA)
    # `every_method: true`: every registered method that no listed experiment uses runs too, as an experiment
    # named after it with the method's defaults (and the profile's method_overrides): experiment -> method. A
    # new method then joins the smoke profiles without an experiment folder in each family.
    method_experiments: dict[str, str] = field(default_factory=dict)

    @property
    def task_list(self) -> list[str | None]:
        return list(self.tasks) if self.tasks is not None else [None]

    @property
    def source(self) -> str:
        return f"{family_dir(self.family) / 'profiles.yaml'}[{self.name}]"

    def grid_for(
        self, method: str, config_lr: float | None = None, experiment: str | None = None
    ) -> tuple[float, ...]:
        """The grid of an experiment: its own entry, else its method's, else "default"."""
        grid = (
            (experiment and self.lr_grid.get(experiment))
            or self.lr_grid.get(method)
            or self.lr_grid["default"]
        )
        if grid == "config":
            if config_lr is None:
                raise ValueError(
                    f"profile {self.name}: the learning rate of {method} comes from each experiment's config"
                )
            return (float(config_lr),)
        return grid  # type: ignore[return-value]


def experiment_config(profile: Profile, experiment: str, task: str | None = None) -> ExperimentConfig:
    """The config of one run of `profile`: the family's defaults <- the profile's overrides <- its overrides for
    `task` <- the experiment's overrides, with the profile's method overrides. The one place a profile becomes
    a config (the CLI, sweeps, tables, verify and the analysis all call it)."""
    method = profile.method_experiments.get(experiment)
    return load_experiment(
        profile.family,
        experiment,
        inline={"method": {"name": method}} if method is not None else None,
        profile_overrides=profile.overrides,
        profile_source=profile.source,
        method_overrides=profile.method_overrides,
        task=task,
        task_overrides=(profile.tasks or {}).get(task) if task is not None else None,
    )


def list_profiles(family: str) -> list[str]:
    return list((read_yaml(family_dir(family) / "profiles.yaml") or {}).keys())


def load_profile(family: str, name: str) -> Profile:
    path = family_dir(family) / "profiles.yaml"
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(path, "<root>", "must be a mapping of profile names")
    if name not in data:
        raise ConfigError(
            path, "profile", f"unknown profile {name!r} for {family} (known: {', '.join(data)})"
        )
    raw = data[name]
    src = f"{path}[{name}]"
    if not isinstance(raw, dict):
        raise ConfigError(src, name, "must be a mapping")
    unknown = set(raw) - PROFILE_KEYS
    if unknown:
        raise ConfigError(src, sorted(unknown)[0], f"unknown key (known: {', '.join(sorted(PROFILE_KEYS))})")
    sections = sections_for(family)
    check_layer(raw.get("overrides"), src, sections)
    known = list_experiments(family)
    exps = raw.get("experiments", "all")
    exps = known if exps == "all" else exps
    if not isinstance(exps, list) or not exps:
        raise ConfigError(src, "experiments", "must be 'all' or a non-empty list")
    for e in exps:
        if e not in known:
            raise ConfigError(src, "experiments", f"unknown experiment {e!r} (known: {', '.join(known)})")
    every_method = raw.get("every_method", False)
    if not isinstance(every_method, bool):
        raise ConfigError(src, "every_method", "must be true or false")
    method_experiments = {}
    if every_method:
        used = {
            (read_yaml(family_dir(family) / e / "experiment.yaml") or {}).get("method", {}).get("name")
            for e in exps
        }
        method_experiments = {m: m for m in available_methods() if m not in used and m not in exps}
        exps = [*exps, *method_experiments]
    seeds = raw.get("seeds", [0])
    tune = raw.get("tune_seeds", seeds[:1])
    for key, v in (("seeds", seeds), ("tune_seeds", tune)):
        if (
            not isinstance(v, list)
            or not v
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in v)
        ):
            raise ConfigError(src, key, "must be a non-empty list of integers")
    grid = raw.get("lr_grid", {})
    if not isinstance(grid, dict) or "default" not in grid:
        raise ConfigError(src, "lr_grid", "must be a mapping with a 'default' grid")
    for method, values in grid.items():
        if values == "config":
            continue
        if (
            not isinstance(values, list)
            or not values
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 for x in values)
        ):
            raise ConfigError(
                src, f"lr_grid.{method}", "must be 'config' or a non-empty list of positive numbers"
            )
    method_overrides = raw.get("method_overrides") or {}
    if not isinstance(method_overrides, dict) or not all(
        isinstance(v, dict) for v in method_overrides.values()
    ):
        raise ConfigError(src, "method_overrides", "must map method names to mappings of hyper-parameters")
    jobs = raw.get("jobs", 1)
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ConfigError(src, "jobs", "must be an integer >= 1")
    tasks = raw.get("tasks")
    if get_family(family).one_task_per_run:
        if isinstance(tasks, list):
            tasks = {t: {} for t in tasks}
        if not isinstance(tasks, dict) or not tasks:
            raise ConfigError(
                src, "tasks", f"{family} runs one task per run: list the tasks (or task: overrides)"
            )
        for task, layer in tasks.items():
            check_layer(layer or {}, f"{src}.tasks.{task}", sections)
        tasks = {t: (layer or {}) for t, layer in tasks.items()}
    elif tasks is not None:
        raise ConfigError(src, "tasks", f"{family} scores every task in each run; it takes no `tasks`")
    return Profile(
        family=family,
        name=name,
        description=str(raw.get("description", "")),
        overrides=raw.get("overrides") or {},
        experiments=tuple(exps),
        seeds=tuple(seeds),
        tune_seeds=tuple(tune),
        lr_grid={k: v if v == "config" else tuple(float(x) for x in v) for k, v in grid.items()},
        method_overrides=method_overrides,
        jobs=jobs,
        tasks=tasks,
        verify=tuple(e for e in (raw.get("verify") or []) if e in exps),
        method_experiments=method_experiments,
    )
