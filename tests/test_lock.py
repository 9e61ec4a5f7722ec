"""The locked environment: requirements.lock covers pyproject's ranges, model loading ignores optional accelerator
packages (transformers >= 5.25 kernelizes when `kernels` is importable), a failure inside a dependency is not
blamed on the user's file, and `tables` labels records made with other package versions."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement

from experiments.harness import lockcheck
from experiments.harness.loading import load_pretrained

ROOT = Path(__file__).resolve().parent.parent


def test_the_lock_pins_every_requirement_of_pyproject_within_its_range():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [
        *project["dependencies"],
        *(r for extra in project["optional-dependencies"].values() for r in extra),
    ]
    lock = lockcheck.read_lock(ROOT / "requirements.lock")
    assert lock, "requirements.lock is missing or holds no pins"
    for text in reqs:
        req = Requirement(text)
        pinned = lock.get(lockcheck.normalize(req.name))
        assert pinned is not None, f"{req.name} is not in requirements.lock: run `make lock`"
        assert req.specifier.contains(lockcheck.release(pinned), prereleases=True), (
            f"requirements.lock pins {req.name}=={pinned}, outside pyproject's {req.specifier}: run `make lock`"
        )


def test_torch_is_locked_as_a_release_so_a_cuda_build_of_it_satisfies_the_pin():
    torch_pins = [
        ln for ln in (ROOT / "requirements.lock").read_text().splitlines() if ln.startswith("torch==")
    ]
    assert len(torch_pins) == 1 and "+" not in torch_pins[0], torch_pins


def test_off_lock_compares_releases_and_names_the_differences():
    lock = {"torch": "2.13.0", "transformers": "5.24.0", "scikit-learn": "1.9.1"}
    same = {"torch": "2.13.0+cu128", "transformers": "5.24.0", "scikit_learn": "1.9.1", "unlocked": "1.0"}
    assert lockcheck.off_lock(same, lock) == {}
    assert lockcheck.off_lock({"transformers": "5.25.0", "torch": "2.14.1+cpu"}, lock) == {
        "transformers": ("5.25.0", "5.24.0"),
        "torch": ("2.14.1+cpu", "2.13.0"),
    }


def _embedded() -> Path:
    from experiments.harness.loading import resolve_model

    return Path(resolve_model("embedded:all-MiniLM-L6-v2"))


@pytest.fixture
def kernels_default_on(monkeypatch):
    """transformers 5.25's behaviour on any release: with `kernels` importable, a load that does not say
    `use_kernels=False` kernelizes, and kernelizing a meta-device model fails as it does there."""
    from transformers import PreTrainedModel

    assert importlib.util.find_spec("kernels") is not None, (
        "the dev extra installs `kernels`; this test needs it"
    )
    original = PreTrainedModel.from_pretrained.__func__

    def from_pretrained(cls, *args, **kwargs):
        if kwargs.get("use_kernels", True):
            raise ValueError("Unsupported device type 'meta'")
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(from_pretrained))


def test_the_harness_loads_with_hub_kernels_off_so_the_preflight_and_a_run_do_not_depend_on_them(
    kernels_default_on,
):
    from accelerate import init_empty_weights
    from transformers import AutoModel, AutoModelForSequenceClassification

    with pytest.raises(ValueError, match="meta"):
        AutoModel.from_pretrained(_embedded())  # what a load without the harness's rule does there
    with init_empty_weights():
        meta = load_pretrained(AutoModelForSequenceClassification, _embedded(), num_labels=2)
    assert next(meta.parameters()).device.type == "meta"
    model = load_pretrained(AutoModel, _embedded())
    assert not getattr(model, "use_kernels", False)


def test_loads_with_and_without_kernels_give_the_same_model(monkeypatch):
    from transformers import AutoModel

    ids = torch.tensor([[101, 7592, 2088, 102]])
    with_kernels = load_pretrained(AutoModel, _embedded()).eval()
    import transformers.modeling_utils as mu

    monkeypatch.setattr(mu, "is_kernels_available", lambda *a, **k: False, raising=False)
    without = load_pretrained(AutoModel, _embedded()).eval()
    with torch.no_grad():
        assert torch.equal(with_kernels(ids).last_hidden_state, without(ids).last_hidden_state)


def test_every_transformers_model_load_of_the_harness_goes_through_load_pretrained():
    pattern = re.compile(r"\bAutoModel\w*\.from_pretrained\(")
    offenders = [f"{p.relative_to(ROOT)}:{i}" for p in (ROOT / "experiments").rglob("*.py")
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]  # fmt: skip
    assert not offenders, f"load these with experiments.harness.loading.load_pretrained: {offenders}"


def test_a_failure_inside_a_dependency_is_not_blamed_on_the_experiment_file(kernels_default_on, monkeypatch):
    from experiments.glue.family import GlueRun
    from experiments.harness import preflight as pf

    class Run:
        cfg = type("C", (), {"model": type("M", (), {"name": "embedded:all-MiniLM-L6-v2"}), "sources": ["x/e.yaml"],
                             "family": "glue", "name": "e"})()  # fmt: skip
        model_path = _embedded()

        def build_model(self):
            from transformers import AutoModel

            return AutoModel.from_pretrained(self.model_path)  # without the rule: fails as on 5.25

    with pytest.raises(pf.IncompatiblePackagesError) as e:
        pf.meta_model(Run())  # type: ignore[arg-type]
    msg = str(e.value)
    assert "x/e.yaml" not in msg and "not because of the experiment file" in msg
    assert "transformers " in msg and "torch " in msg and "requirements.lock" in msg
    # a model folder whose config does not read is the user's: file and key
    Run.model_path = ROOT / "tests"
    with pytest.raises(pf.ConfigError, match=r"x/e.yaml: model.name: cannot load"):
        pf.meta_model(Run())  # type: ignore[arg-type]
    assert GlueRun  # the real families build through load_pretrained (test above)
