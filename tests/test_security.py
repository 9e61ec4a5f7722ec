"""Nothing unpickles a file the user did not write: adapters, checkpoints and caches are safetensors only."""

from __future__ import annotations

import ast
import os
import pickle
import re
from pathlib import Path

import pytest
from safetensors import safe_open

import loradash
from loradash import LoraDashConfig, SVDCache, get_loradash_model, launch_loradash
from tests.helpers import tiny_bert

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("loradash", "baselines", "experiments", "bench")
TARGETS = ["query", "key", "value", "dense"]


class _Trap:
    """A pickle that, if ever unpickled, creates `marker` (standing in for arbitrary code)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def write_trap(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps({"weights": _Trap(marker)}))


def dash_model(**kw):
    return get_loradash_model(
        tiny_bert(), LoraDashConfig(r=4, lora_alpha=8, target_modules=TARGETS, num_directions=2, **kw)
    )


def test_trap_works(tmp_path):
    # The marker really appears when the file is unpickled: the negative tests below are meaningful.
    write_trap(tmp_path / "x.bin", tmp_path / "marker")
    pickle.loads((tmp_path / "x.bin").read_bytes())
    assert (tmp_path / "marker").exists()


@pytest.mark.parametrize("name", ["adapter_model.bin", "adapter_model.pt"])
def test_from_pretrained_refuses_a_pickled_adapter(tmp_path, name):
    dash_model().save_pretrained(tmp_path)
    (tmp_path / "adapter_model.safetensors").unlink()
    write_trap(tmp_path / name, tmp_path / "marker")
    with pytest.raises(FileNotFoundError, match="safetensors only") as err:
        loradash.from_pretrained(tiny_bert(), tmp_path)
    assert name in str(err.value) and "adapter_model.safetensors" in str(err.value)
    assert not (tmp_path / "marker").exists()


def test_saved_and_exported_adapters_are_safetensors_only(tmp_path):
    model = dash_model(prelaunch_steps=0)
    launch_loradash(model)
    model.save_pretrained(tmp_path / "dash")
    loradash.export_as_lora(model, tmp_path / "lora")
    for folder in ("dash", "lora"):
        files = set(os.listdir(tmp_path / folder)) - {"README.md"}  # peft writes a model card
        assert files == {"adapter_config.json", "adapter_model.safetensors"}, files


def test_svd_cache_never_unpickles_an_entry(tmp_path):
    model = dash_model(svd_cache_dir=str(tmp_path / "cache"))
    _, module, _ = next(iter(loradash.dash_layers(model)))
    weight = module.get_base_layer().weight
    path = Path(SVDCache(str(tmp_path / "cache")).path(weight))
    path.parent.mkdir(parents=True)
    write_trap(path, tmp_path / "marker")  # a pickle where an entry belongs
    launch_loradash(model)
    assert not (tmp_path / "marker").exists()
    with safe_open(str(path), framework="pt") as f:  # replaced by a valid entry
        assert set(f.keys()) == {"U", "S", "Vh"}


def _python_files():
    for top in SOURCES:
        yield from sorted((ROOT / top).rglob("*.py"))


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _kw(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_const(node: ast.AST | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


UNPICKLERS = {
    "pickle.load",
    "pickle.loads",
    "pickle.Unpickler",
    "cPickle.load",
    "dill.load",
    "dill.loads",
    "cloudpickle.load",
    "cloudpickle.loads",
    "joblib.load",
    "pd.read_pickle",
    "pandas.read_pickle",
    "torch.serialization.load",
}


def unsafe_calls(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name == "torch.load" and not _is_const(_kw(node, "weights_only"), True):
            found.append((node.lineno, "torch.load without weights_only=True"))
        elif name in UNPICKLERS:
            found.append((node.lineno, name))
        elif name in ("np.load", "numpy.load") and _kw(node, "allow_pickle") is not None:
            if not _is_const(_kw(node, "allow_pickle"), False):
                found.append((node.lineno, "np.load(allow_pickle=...)"))
        trust = _kw(node, "trust_remote_code")
        if trust is not None and not _is_const(trust, False):
            found.append((node.lineno, "trust_remote_code"))
    return found


def test_scanner_catches_what_it_looks_for():
    code = (
        "torch.load(p)\ntorch.load(p, weights_only=False)\ntorch.load(p, weights_only=True)\n"
        "pickle.loads(b)\nnp.load(p, allow_pickle=True)\nnp.load(p)\n"
        "AutoModel.from_pretrained(p, trust_remote_code=True)\nAutoModel.from_pretrained(p, trust_remote_code=x)\n"
        "AutoModel.from_pretrained(p, trust_remote_code=False)\n"
    )
    assert [line for line, _ in unsafe_calls(ast.parse(code))] == [1, 2, 4, 5, 7, 8]


def test_sources_never_unpickle_or_trust_remote_code():
    problems = []
    for path in _python_files():
        for line, what in unsafe_calls(ast.parse(path.read_text(), filename=str(path))):
            problems.append(f"{path.relative_to(ROOT)}:{line}: {what}")
    assert problems == []


def test_configs_and_model_args_never_trust_remote_code():
    # Strings reach transformers / lm-eval too ("trust_remote_code=True" in model_args, YAML configs).
    pattern = re.compile(r"trust_remote_code\s*[=:]\s*['\"]?(true|1|yes)\b", re.IGNORECASE)
    problems = []
    for top in SOURCES:
        for path in sorted((ROOT / top).rglob("*")):
            if path.suffix in (".py", ".yaml", ".yml", ".json", ".toml", ".cfg") and path.is_file():
                for i, text in enumerate(path.read_text(errors="replace").splitlines(), start=1):
                    if pattern.search(text):
                        problems.append(f"{path.relative_to(ROOT)}:{i}")
    assert problems == []


def test_a_yaml_alias_bomb_in_a_profile_is_one_line_promptly(tmp_path, monkeypatch, capsys):
    import shutil

    import experiments.harness.config as config_mod
    from experiments.cli import main

    root = tmp_path / "exps"
    shutil.copytree(
        config_mod.family_dir("glue"), root / "glue", ignore=shutil.ignore_patterns("*.py", "__pycache__")
    )
    monkeypatch.setattr(config_mod, "EXPERIMENTS_ROOT", root)
    levels = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    levels += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    bomb = "\n".join(levels) + "\nbomb:\n  description: *a9\n"  # 10**9 strings once expanded
    (root / "glue" / "profiles.yaml").write_text(bomb + (root / "glue" / "profiles.yaml").read_text())
    capsys.readouterr()
    assert main(["list", "--family", "glue", "--profile", "smoke", "--results-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "alias bomb" in err[0] and "profiles.yaml" in err[0], err


def test_shipped_yaml_with_aliases_still_reads():
    from experiments.harness.profiles import load_profile

    assert load_profile("dreambooth", "paper").overrides


def _trapped_model_folder(tmp_path: Path) -> tuple[Path, Path]:
    """The embedded model's config and tokenizer with a pickled `pytorch_model.bin` (a trap) instead of its
    safetensors weights."""
    import shutil

    from experiments.harness.loading import resolve_model

    src, folder, marker = (
        Path(resolve_model("embedded:all-MiniLM-L6-v2")),
        tmp_path / "model",
        tmp_path / "marker",
    )
    shutil.copytree(src, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    write_trap(folder / "pytorch_model.bin", marker)
    return folder, marker


@pytest.mark.parametrize(("family", "experiment", "task"), [("glue", "lora-r2", "cola"),
                                                              ("commonsense", "lora-r1", None),
                                                              ("planted", "lora-r1", None)])  # fmt: skip
def test_families_never_unpickle_a_model_folder_holding_only_a_bin(tmp_path, family, experiment, task):
    """Every family that loads a transformers model from a folder refuses pickled weights without opening them:
    the run stops on a missing safetensors file, and the trap inside the .bin never fires."""
    from experiments.harness.config import with_overrides
    from experiments.harness.profiles import experiment_config, load_profile
    from experiments.harness.registry import get_family

    folder, marker = _trapped_model_folder(tmp_path)
    cfg = experiment_config(load_profile(family, "smoke"), experiment, task)
    cfg = with_overrides(cfg, model={"name": str(folder)})
    with pytest.raises(OSError, match="safetensors"):
        get_family(family)(cfg).build_model()
    assert not marker.exists()
