"""The method registry: fails loudly, and every registered method honours the same contract on a tiny BERT."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import baselines
from baselines import (
    ParamCounts,
    UnknownMethodError,
    available_methods,
    base_param_count,
    build_method,
    get_method,
    matched_ranks,
    register,
    target_layer_shapes,
)
from baselines import base as baselines_base
from baselines.lora import Lora
from tests.helpers import tiny_bert, tiny_llama

BERT_TARGETS = [
    "query",
    "key",
    "value",
    "dense",
]  # 13 layers: 4 x (32 x 32), 48 x 32, 32 x 48 per block + pooler
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
HEAD = ["classifier"]

# Per-method test setup. Every method takes the full BERT target list (peft 0.21's VeRA slices one shared
# projection pair for layers of different shapes); a method that cannot would name a same-shape subset here.
TEST_TARGETS: dict[str, list[str]] = {}
TEST_PARAMS: dict[str, dict] = {
    "loradash": {"r": 4, "num_directions": 3, "prelaunch_steps": 1},  # crosses the launch at step 1 of 3
    "vera": {"r": 16},  # the default (256, capped to 32 here) has its own test
}
RANKED = [name for name in available_methods() if get_method(name).has_rank()]


def wrapped(name: str, model=None, *, targets=None, head=HEAD, **overrides):
    """(method, base model before wrapping: shapes and total, wrapped model)."""
    method = build_method(name, **{**TEST_PARAMS.get(name, {}), **overrides})
    model = model if model is not None else tiny_bert()
    targets = targets or TEST_TARGETS.get(name, BERT_TARGETS)
    shapes = target_layer_shapes(model, targets)
    total = base_param_count(model, head)
    return method, shapes, total, method.wrap(model, target_modules=targets, modules_to_save=head)


def train(method, model, batch, steps: int) -> None:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for step in range(1, steps + 1):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
        method.on_optimizer_step(model, step)
    model.eval()


# ---------------------------------------------------------------------------------------------------------------
# Registry and hyper-parameters


def registered_in_files() -> dict[str, str]:
    """method name -> file, read from the `@register`-ed classes of baselines/*.py (no list kept anywhere)."""
    found = {}
    for path in sorted(Path(baselines_base.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                ast.unparse(d) == "register" for d in node.decorator_list
            ):
                name = next(
                    a.value.value
                    for a in node.body
                    if isinstance(a, ast.Assign) and ast.unparse(a.targets[0]) == "name"
                )
                found[name] = path.name
    return found


def test_the_registry_finds_every_method_file_without_a_list():
    """Adding a method is its file: every `@register`-ed class of baselines/ is registered, and nothing else."""
    assert available_methods() == sorted(registered_in_files())
    assert set(registered_in_files().values()).isdisjoint(f"{m}.py" for m in baselines_base.NOT_METHODS)


def test_a_new_method_module_is_discovered(tmp_path, monkeypatch):
    """The discovery itself: a package holding one more method file registers it on first lookup."""
    import importlib

    pkg = tmp_path / "more_methods"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "from pathlib import Path\n\nfrom baselines.base import Method, UnknownMethodError\n"
        "from baselines.registry import Registry, import_modules\n\n"
        "REGISTRY = Registry('method', Method, unknown=UnknownMethodError,\n"
        "                    discover=lambda: import_modules('more_methods', Path(__file__).parent))\n"
    )
    (pkg / "wide_lora.py").write_text(
        "from baselines.lora import Lora\nfrom more_methods import REGISTRY\n\n\n"
        "@REGISTRY.register\nclass WideLora(Lora):\n    name = 'wide-lora'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = importlib.import_module("more_methods").REGISTRY
    assert registry.names() == ["wide-lora"] and registry.get("wide-lora").__name__ == "WideLora"
    with pytest.raises(UnknownMethodError, match=r"unknown method 'lora' \(known: wide-lora\)"):
        registry.get("lora")


def test_unknown_method_lists_the_known_ones_sorted():
    with pytest.raises(KeyError, match=re.escape(", ".join(available_methods()))) as info:
        get_method("qlora")
    assert isinstance(info.value, ValueError)  # also a config error
    assert "'qlora'" in str(info.value)


def test_duplicate_registration_raises(monkeypatch):
    saved = baselines_base.METHODS.snapshot()
    monkeypatch.setattr(baselines_base.METHODS, "_entries", saved | {})

    class Again(Lora):
        name = "lora"

    with pytest.raises(ValueError, match="'lora' is already registered"):
        register(Again)

    @register
    class Fresh(Lora):
        name = "fresh-lora"

    assert "fresh-lora" in available_methods() and build_method("fresh-lora").rank == 8


@pytest.mark.parametrize("name", available_methods())
def test_unknown_hyperparameter_is_named(name):
    with pytest.raises(ValueError, match=r"unknown hyper-parameter\(s\) \['rnak'\]; known: \["):
        build_method(name, rnak=4)


@pytest.mark.parametrize(
    "name,params,match",
    [
        ("lora", {"r": 0}, "r must be >= 1"),
        ("lora", {"r": "8"}, "r must be an int"),
        ("lora", {"r": True}, "r must be an int"),
        ("lora", {"lora_dropout": 1.0}, "lora_dropout"),
        ("dora", {"lora_alpha": 0}, "lora_alpha"),
        ("pissa", {"r": 2.5}, "r must be an int"),
        ("loradash", {"num_directions": 0}, "num_directions"),
        ("loradash", {"prelaunch_steps": -1}, "prelaunch_steps"),
        ("loradash", {"prelaunch_clock": "epochs"}, "prelaunch_clock"),
        ("vera", {"save_projection": "yes"}, "save_projection"),
        ("lora", {"init_lora_weights": 1}, "init_lora_weights"),
        ("loradash", {"init_lora_weights": "Gaussian"}, "init_lora_weights"),
        ("dora", {"init_lora_weights": False}, "init_lora_weights"),
    ],
)
def test_invalid_hyperparameter_values(name, params, match):
    with pytest.raises(ValueError, match=match):
        build_method(name, **params)


def test_params_are_resolved_and_read_only():
    method = build_method("lora", r=4)
    assert dict(method.params) == {"r": 4, "lora_alpha": 8, "lora_dropout": 0.05, "init_lora_weights": True}
    assert build_method("pissa", r=4).params["lora_alpha"] == 4  # PiSSA's scripts: alpha = r
    assert build_method("full").rank is None
    with pytest.raises(TypeError):
        method.params["r"] = 16  # type: ignore[index]


@pytest.mark.parametrize("name", ["lora", "dora", "loradash"])
def test_gaussian_init_draws_a_from_a_normal_of_std_one_over_r(name):
    """diffusers' DreamBooth LoRA init (the paper's SDXL runs): A ~ N(0, 1/r), B = 0; the default stays Kaiming."""
    r = 4
    stds = {}
    for init in (True, "gaussian"):
        torch.manual_seed(0)
        model = build_method(name, r=r, init_lora_weights=init).wrap(
            tiny_llama(), target_modules=["q_proj", "v_proj"]
        )
        a = torch.cat([p.detach().flatten() for n, p in model.named_parameters() if "lora_A" in n])
        b = torch.cat([p.detach().flatten() for n, p in model.named_parameters() if "lora_B" in n])
        assert torch.count_nonzero(b) == 0
        stds[init] = a.std().item()
    assert abs(stds["gaussian"] - 1 / r) < 0.02  # 1024+ draws: the sample std is within a few percent
    assert abs(stds[True] - 1 / r) > 0.05  # Kaiming-uniform on 64 inputs: std 1/sqrt(3 * 64) ~ 0.072


def test_a_setting_added_later_leaves_earlier_records_current():
    """`init_lora_weights` joined LoRA's hyper-parameters after results were committed: at its old value it is
    left out of the config hash (earlier records stay current); another value changes the hash."""
    from experiments.harness.config import HASHED_UNLESS, config_hash
    from experiments.harness.plan import load_configs
    from experiments.harness.profiles import load_profile

    cfg = next(c for c in load_configs(load_profile("glue", "smoke")).values() if c.method.name == "lora")
    resolved = dict(build_method("lora", **cfg.method.params).params)
    assert resolved["init_lora_weights"] is True and HASHED_UNLESS["method"]["init_lora_weights"] is True
    before = {k: v for k, v in resolved.items() if k != "init_lora_weights"}
    assert config_hash(cfg, resolved) == config_hash(cfg, before)
    assert config_hash(cfg, {**resolved, "init_lora_weights": "gaussian"}) != config_hash(cfg, before)


@pytest.mark.parametrize("name", RANKED)
def test_impossible_rank_names_the_layer(name):
    with pytest.raises(
        ValueError,
        match=r"r=33 for target layer 'bert\.encoder\.layer\.0\.attention\.self\.query' \(32 x 32\)",
    ):
        build_method(name, r=33).wrap(tiny_bert(), target_modules=BERT_TARGETS, modules_to_save=HEAD)


def test_vera_caps_a_default_rank_to_the_model_and_records_it():
    method = build_method("vera")
    assert method.rank == 256
    with pytest.warns(UserWarning, match="'r': 32"):
        model = method.wrap(tiny_bert(), target_modules=BERT_TARGETS, modules_to_save=HEAD)
    assert method.rank == method.params["r"] == 32
    shapes = target_layer_shapes(tiny_bert(), BERT_TARGETS)
    assert method.counts(model).trainable == 13 * 32 + sum(o for o, _ in shapes)


# ---------------------------------------------------------------------------------------------------------------
# The contract, for every registered method


@pytest.mark.parametrize("name", available_methods())
def test_method_contract(name, batch, tmp_path):
    method, shapes, total, model = wrapped(name)
    cls = type(method)

    # exact counts, equal to the analytic ones
    counts = method.counts(model)
    assert isinstance(counts, ParamCounts)
    assert counts.trainable == cls.analytic_trainable(shapes, method.rank, total, **method.params)
    assert counts.stored == cls.analytic_stored(shapes, method.rank, total, **method.params)
    assert counts.head == 32 * 2 + 2  # the classifier, trainable, counted apart
    assert counts.stored >= counts.trainable > 0

    # only the method's parameters and the head change (LoRA-Dash: its scalars only move after the launch)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    train(method, model, batch, steps=3)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == trainable
    assert any("classifier" in n for n in changed) and any("classifier" not in n for n in changed)
    json.dumps(method.diagnostics(model))  # goes into the result file

    # save -> load gives the same outputs
    with torch.no_grad():
        expected = model(**batch).logits
    method.save_adapter(model, tmp_path)
    loaded = method.load_adapter(tiny_bert(), tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, expected, rtol=0, atol=1e-6)

    # merged == unmerged, and unmerging restores the model
    if method.supports_merge:
        with torch.no_grad():
            model.merge_adapter()
            merged = model(**batch).logits
            model.unmerge_adapter()
            again = model(**batch).logits
        torch.testing.assert_close(merged, expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(again, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", available_methods())
def test_counts_match_analytic_on_llama(name):
    # LLaMA's k/v projections are 16 x 32 (grouped-query attention): shapes differ within a block.
    method, shapes, total, model = wrapped(name, tiny_llama(), targets=LLAMA_TARGETS, head=[])
    counts = method.counts(model)
    assert counts.head == 0
    assert counts.trainable == type(method).analytic_trainable(shapes, method.rank, total, **method.params)
    assert counts.stored == type(method).analytic_stored(shapes, method.rank, total, **method.params)


def test_full_trains_everything_but_counts_the_head_apart():
    method, _, total, model = wrapped("full")
    assert method.rank is None
    assert all(p.requires_grad for p in model.parameters())
    counts = method.counts(model)
    assert counts == ParamCounts(trainable=total, head=66, stored=total)
    assert counts.trainable + counts.head == sum(p.numel() for p in model.parameters())


def test_loradash_diagnostics_report_the_launch(batch):
    method, _, _, model = wrapped("loradash", prelaunch_steps=2)
    train(method, model, batch, steps=1)
    diag = method.diagnostics(model)
    assert diag["prelaunch_steps"] == 2 and diag["launch_step"] is None  # not launched yet
    assert diag["launched_layers"] == 0 and diag["num_layers"] == 13
    train(method, model, batch, steps=3)  # steps 1..3 again: the launch happens at step 2
    diag = method.diagnostics(model, lrs=[1e-2] * 3, best_step=3)
    assert diag["launched_layers"] == 13 and diag["launch_step"] == 2  # the step it actually launched at
    assert diag["post_launch_steps"] == 1 and diag["lambda_lr_sum_after_launch"] == pytest.approx(1e-2)
    diag = method.diagnostics(
        model, lrs=[1e-2, 8e-3, 5e-3, 2e-3], best_step=4
    )  # a decaying schedule: its sum
    assert diag["lambda_lr_sum_after_launch"] == pytest.approx(7e-3)
    assert diag["summary"]["summed lambda lr after launch"] == pytest.approx(7e-3) and "0.007" in diag["note"]
    query = diag["layers"]["bert.encoder.layer.0.attention.self.query"]
    assert len(query["indices"]) == len(query["sigma"]) == 3 and min(query["indices"]) >= 0
    assert query["max_abs_lambda"] > 0
    assert diag["dash_output_fraction_median"] is None  # not measured without a forward pass


def test_loradash_measures_the_dash_term_against_the_layer_output(batch):
    """||U_s diag(lambda) Vh_s x|| / ||y|| per layer on the batch that `forward` runs, recomputed here from the
    layer's input and output; with lambda = 0 the dash term is nil."""
    from loradash import dash_layers

    method, _, _, model = wrapped("loradash", prelaunch_steps=1)
    train(method, model, batch, steps=4)
    model.train()  # measured in eval mode, and the mode restored
    seen = {}
    name, layer, adapter = next(
        (n, m, a) for n, m, a in dash_layers(model) if n.endswith("layer.0.attention.self.query")
    )
    handle = layer.register_forward_hook(lambda mod, args, out: seen.update(x=args[0], y=out))
    diag = method.diagnostics(model, lrs=[1e-2] * 4, best_step=4, forward=lambda: model(**batch))
    handle.remove()
    assert model.training
    lam = layer.lora_dash_lambda[adapter].weight.detach()
    dash = (seen["x"] @ layer.lora_dash_Vh[adapter].T * lam) @ layer.lora_dash_U[adapter].T
    want = float(dash.norm() / seen["y"].norm())
    row = diag["layers"][name.removeprefix("base_model.model.")]
    assert 0 < row["dash_output_fraction"] == pytest.approx(want, rel=1e-5)
    fractions = sorted(r["dash_output_fraction"] for r in diag["layers"].values())
    assert diag["dash_output_fraction_median"] == pytest.approx(float(np.median(fractions)))
    assert diag["summary"]["dash term / layer output (median layer)"] == diag["dash_output_fraction_median"]
    with torch.no_grad():
        for _, m, a in dash_layers(model):
            m.lora_dash_lambda[a].weight.zero_()
    diag = method.diagnostics(model, lrs=[1e-2] * 4, best_step=4, forward=lambda: model(**batch))
    assert diag["dash_output_fraction_median"] == 0.0


# ---------------------------------------------------------------------------------------------------------------
# Budgets


def test_target_layer_shapes_use_peft_matching():
    shapes = target_layer_shapes(tiny_bert(), BERT_TARGETS)
    assert len(shapes) == 13 and shapes.count((48, 32)) == 2 and shapes.count((32, 48)) == 2
    assert target_layer_shapes(tiny_bert(), ["query"]) == [(32, 32), (32, 32)]
    with pytest.raises(ValueError, match="No nn.Linear module matches"):
        target_layer_shapes(tiny_bert(), ["q_proj"])


def test_matched_ranks():
    model = tiny_bert()
    shapes, total = target_layer_shapes(model, BERT_TARGETS), base_param_count(model, HEAD)
    # LoRA-Dash r=1, s=8: 13 layers x (1 x (in + out) + 8) = 896 + 104
    reference = get_method("loradash").analytic_trainable(shapes, 1, total)
    assert reference == 1000
    out = matched_ranks("loradash", 1, shapes, total, others=["lora", "dora", "vera", "full"])
    assert out["lora"][8.0] == {
        "rank": 9,
        "trainable": 9 * 896,
        "target": 8000,
        "ratio": 8.064,
        "capped": False,
    }
    assert out["lora"][16.0]["rank"] == 18
    for name in ("lora", "dora"):
        for k, row in out[name].items():  # no other rank is closer
            count = lambda r, name=name: get_method(name).analytic_trainable(shapes, r, total)  # noqa: E731
            assert all(
                abs(row["trainable"] - k * reference) <= abs(count(r) - k * reference) for r in range(1, 33)
            )
    assert out["vera"][8.0]["rank"] == 32 and out["vera"][8.0]["capped"]  # VeRA cannot reach 8x here
    assert out["full"][1.0] == {
        "rank": None,
        "trainable": total,
        "target": 1000,
        "ratio": total / 1000,
        "capped": False,
    }
    assert matched_ranks("lora", 8, shapes, total, others=["lora"], factors=(1,))["lora"][1.0]["rank"] == 8


def test_package_exports():
    for name in ("Method", "ParamCounts", "register", "get_method", "available_methods", "build_method"):
        assert hasattr(baselines, name)
