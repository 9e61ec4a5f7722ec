"""Checks of everything a run needs, before any run of a `sweep` or `run` starts.

A sweep of hours should not die in its tenth run on a typo that its first config already had. For every
distinct config of a plan this checks: the method and its hyper-parameters (`build_method`), the data files
(the family's `check_data`, once per distinct data section), the model (its architecture built on the meta
device: the config and weight files must be readable, no weight is loaded), and the hyper-parameters that
depend on the model or the schedule (`Method.check_run`: the rank and LoRA-Dash's s against the smallest
targeted layer, LoRA-Dash's t against the run's optimizer steps), and that the trackers of `train.report_to`
import (accelerate would drop a missing one without a word). Every problem is raised as an error the CLI reports
in one line (a `ConfigError` naming the file that set the value, the data error naming the file, or the missing
package with its pip command).
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from experiments.harness import tracking
from experiments.harness.config import ConfigError, ExperimentConfig
from experiments.harness.errors import IncompatiblePackagesError
from experiments.harness.loading import stack_versions
from experiments.harness.registry import Family, get_family
from experiments.harness.schedule import total_steps


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No load reports, progress bars or warnings while the checks build tokenizers and meta models (the user
    sees one line per problem, nothing else)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _experiment_file(cfg: ExperimentConfig) -> str:
    return cfg.sources[-1] if cfg.sources else f"{cfg.family}/{cfg.name}"


def check_method(cfg: ExperimentConfig) -> Any:
    """The method built from the config (unknown names and bad hyper-parameters are config errors)."""
    from baselines import UnknownMethodError, build_method

    try:
        return build_method(cfg.method.name, **cfg.method.params)
    except UnknownMethodError as e:
        raise ConfigError(_experiment_file(cfg), "method.name", str(e)) from e
    except (TypeError, ValueError) as e:
        raise ConfigError(_experiment_file(cfg), "method", str(e)) from e


def check_data(cfg: ExperimentConfig) -> None:
    """The family's data check; a plain ValueError (e.g. too few examples) becomes a config error of `data`."""
    try:
        get_family(cfg.family).check_data(cfg)
    except ValueError as e:
        if type(e) is not ValueError:  # the families' own data errors name their file already
            raise
        raise ConfigError(_experiment_file(cfg), "data", str(e)) from e


def _instance(cfg: ExperimentConfig) -> Family:
    """One run of the family without its model (data and tokenizer only)."""
    try:
        with quiet_transformers():
            return get_family(cfg.family)(cfg)
    except (OSError, ValueError) as e:
        if isinstance(e, FileNotFoundError) or (isinstance(e, ValueError) and type(e) is not ValueError):
            raise  # a missing file, or a family's data error: they name their file already
        raise ConfigError(_experiment_file(cfg), "model", f"cannot load {cfg.model.name!r}: {e}") from e


# `init_empty_weights` patches `nn.Module.register_parameter` for the whole process and restores what it found
# on exit; two threads entering it at once (in-process cluster jobs: submitit's "debug" executor) would restore
# each other's patch and leave every later model on the meta device. One at a time.
_META_LOCK = threading.Lock()


def meta_model(run: Family) -> torch.nn.Module:
    """The run's model on the meta device: its architecture, read from the model's files, without weights."""
    from accelerate import init_empty_weights

    cfg = run.cfg
    try:
        with _META_LOCK, quiet_transformers(), init_empty_weights():
            return run.build_model()
    except OSError as e:  # missing or unreadable model files: the name in the user's file
        raise ConfigError(_experiment_file(cfg), "model.name", f"cannot load {cfg.model.name!r}: {e}") from e
    except Exception as e:
        if _config_unreadable(run) is not None:
            raise ConfigError(
                _experiment_file(cfg), "model.name", f"cannot load {cfg.model.name!r}: {e}"
            ) from e
        raise IncompatiblePackagesError(
            f"building {cfg.model.name!r} failed inside the installed packages, not because of the experiment "
            f"file (its config reads): {type(e).__name__}: {e} [raised in {_raised_in(e)}; {stack_versions()}]. "
            "`make setup` installs the versions the suite passed with (requirements.lock)"
        ) from e


def _config_unreadable(run: Family) -> Exception | None:
    """The error reading the model's config (a transformers model), or None when it reads or is not one."""
    path = getattr(run, "model_path", None)
    if path is None:
        return None
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(path)
    except Exception as e:  # noqa: BLE001 - any failure to read it is the named model's
        return e
    return None


def _raised_in(e: BaseException) -> str:
    """The top-level package of the innermost frame of the traceback (`kernels`, `transformers`, ...)."""
    tb = e.__traceback__
    module = "?"
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", module)
        tb = tb.tb_next
    return module.split(".")[0]


def preflight(configs: Iterable[ExperimentConfig]) -> None:
    """Raise the first problem of any config, before anything is trained (see the module docstring)."""
    from baselines import target_layers

    configs = list(configs)
    tracking.check_installed(n for cfg in configs for n in tracking.requested(cfg.train.report_to))
    methods = [check_method(cfg) for cfg in configs]
    for cfg in {c.data: c for c in configs}.values():
        check_data(cfg)  # missing or malformed data fails before any model is built
    runs: dict[Any, Family] = {}
    models: dict[Any, torch.nn.Module] = {}
    for cfg, method in zip(configs, methods, strict=True):
        key = (cfg.family, cfg.data, cfg.model, cfg.eval)
        if key not in runs:
            runs[key] = _instance(cfg)
            models[key] = meta_model(runs[key])
        steps = total_steps(cfg, runs[key].num_train if cfg.train.max_steps is None else None)
        if steps < 1:
            raise ConfigError(_experiment_file(cfg), "train.epochs", f"the run has {steps} optimizer steps")
        layers = []
        if method.needs_target_modules:
            try:
                layers = target_layers(models[key], cfg.model.target_modules)
            except ValueError as e:
                raise ConfigError(_experiment_file(cfg), "model.target_modules", str(e)) from e
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # VeRA's capped default rank warns; the run will say so
                method.check_run(layers, total_steps=steps, micro_batches_per_step=cfg.train.grad_accum)
        except ValueError as e:
            raise ConfigError(_experiment_file(cfg), "method", str(e)) from e
