"""What adding a method or a family costs: these fail when a hard-coded list of methods or families creeps back.

A method is its file in baselines/ with `@register`; the registry, the contract tests (which parametrize over
`available_methods()`), the smoke profiles (`every_method: true`) and the GPU estimates (which read what the
method declares) find it. A family is its folder under experiments/; the registry finds it, and the harness,
report and CLI never name one.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from baselines import base as baselines_base
from baselines.lora import Lora
from experiments.harness.config import MethodConfig
from experiments.harness.plan import load_configs
from experiments.harness.profiles import experiment_config, list_profiles, load_profile
from experiments.harness.registry import EXPERIMENTS_ROOT, available_families, get_family

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def new_method(monkeypatch):
    """A method registered the way a new file registers one (and removed again after the test)."""
    monkeypatch.setattr(baselines_base.METHODS, "_entries", baselines_base.METHODS.snapshot())

    @baselines_base.register
    class WideLora(Lora):
        name = "wide-lora"

    return WideLora


@pytest.mark.parametrize("family", [f for f in available_families() if "smoke" in list_profiles(f)])
def test_a_new_method_joins_every_smoke_profile_without_a_folder(family, new_method):
    profile = load_profile(family, "smoke")
    assert profile.method_experiments == {"wide-lora": "wide-lora"} and "wide-lora" in profile.experiments
    task = profile.task_list[0]
    cfg = experiment_config(profile, "wide-lora", task)
    assert cfg.method.name == "wide-lora" and cfg.family == family
    assert ("wide-lora", task) in load_configs(profile)  # the plan, the sweep and the tables run it


@pytest.mark.parametrize(
    ("family", "experiment"), [("glue", "lora-r8"), ("commonsense_llm", "llama-7b-lora-r16")]
)
def test_a_new_method_gets_a_gpu_estimate(family, experiment, new_method):
    profile = load_profile(family, "paper")
    cfg = experiment_config(profile, experiment, profile.task_list[0])
    lora = get_family(family).estimate(cfg)
    wide = get_family(family).estimate(
        dataclasses.replace(cfg, method=MethodConfig("wide-lora", dict(cfg.method.params)))
    )
    assert lora is not None and wide is not None and wide["gpu_hours"] == lora["gpu_hours"]


def test_every_family_folder_is_registered_and_nothing_else():
    folders = {
        d.name
        for d in EXPERIMENTS_ROOT.iterdir()
        if (d / "family.py").is_file() and (d / "defaults.yaml").is_file()
    }
    assert available_families() == sorted(folders)
    for name in folders:
        assert get_family(name).folder() == EXPERIMENTS_ROOT / name


# (module, string): the names a generic module may hold, and why
ALLOWED = {
    ("experiments/harness/lockcheck.py", "loradash"),  # the package, not the method
    ("experiments/harness/records.py", "loradash"),  # the package's version in provenance
    ("experiments/cli.py", "commonsense"),  # the default of --family
    ("experiments/cli.py", "loradash"),  # the default of `budget --method`
}


def generic_modules() -> list[Path]:
    return [
        *sorted((ROOT / "experiments" / "harness").glob("*.py")),
        *sorted((ROOT / "experiments" / "report").glob("*.py")),
        ROOT / "experiments" / "cli.py",
    ]


def test_no_generic_module_names_a_method_or_a_family():
    """The loop, plan, sweeps, records, tables and the CLI read what methods and families declare; a string
    naming one of them (an `if method == "full"`, a list of families, an exception's class name) fails here."""
    names = set(baselines_base.METHODS.names()) | set(available_families())
    found = []
    for path in generic_modules():
        rel = str(path.relative_to(ROOT))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names and (rel, node.value) not in ALLOWED:
                found.append(f"{rel}:{node.lineno}: {node.value!r}")
    assert not found


def test_the_cli_names_no_error_class():
    """The CLI maps the one base class to exit 2; it recognises no error by its name."""
    source = (ROOT / "experiments" / "cli.py").read_text()
    for cls in (
        "DataFormatError",
        "GlueFormatError",
        "CorruptRecordError",
        "ConfigError",
        "FileNotFoundError",
    ):
        assert cls not in source
