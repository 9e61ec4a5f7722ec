"""The launch's on-disk SVD cache: hits, bit-identical selections, corrupt and stale entries, safetensors only."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import loradash
from loradash import LoraDashConfig, SVDCache, dash_layers, get_loradash_model, launch_loradash
from loradash.svd_cache import SVD_CACHE_ENV, weight_key
from tests.helpers import tiny_bert

TARGETS = ["query", "key", "value", "dense"]


@pytest.fixture
def svd_calls(monkeypatch):
    """Counts torch.linalg.svd calls (the selection looks the function up at call time)."""
    calls = []
    real = torch.linalg.svd

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.linalg, "svd", counting)
    return calls


def dash_model(cache_dir, *, run_seed=0, r=4, s=3, base_seed=0):
    """Tiny BERT (its weights fixed by base_seed) with a LoRA-Dash adapter whose B is non-zero (run_seed)."""
    base = tiny_bert(seed=base_seed)
    torch.manual_seed(run_seed)
    config = LoraDashConfig(
        r=r, lora_alpha=2 * r, target_modules=TARGETS, num_directions=s, svd_cache_dir=cache_dir
    )
    model = get_loradash_model(base, config)
    g = torch.Generator().manual_seed(run_seed)
    with torch.no_grad():
        for _, module, adapter in dash_layers(model):
            w = module.lora_B[adapter].weight
            w.copy_(0.1 * torch.randn(w.shape, generator=g))
    return model


def selections(model) -> dict[str, tuple[torch.Tensor, ...]]:
    return {
        name: (
            m.lora_dash_indices[a].clone(),
            m.lora_dash_U[a].clone(),
            m.lora_dash_Vh[a].clone(),
            m.lora_dash_sigma[a].clone(),
        )
        for name, m, a in dash_layers(model)
    }


def assert_identical(a, b):
    assert a.keys() == b.keys()
    for name in a:
        for x, y in zip(a[name], b[name], strict=True):
            assert torch.equal(x, y), name  # bit-identical, not merely close


def entries(cache_dir) -> list[str]:
    return sorted(
        os.path.join(root, f) for root, _, files in os.walk(cache_dir) for f in files if not f.startswith(".")
    )


def n_layers(model) -> int:
    return sum(1 for _ in dash_layers(model))


def test_second_launch_hits_the_cache_for_another_seed_rank_and_s(tmp_path, svd_calls):
    cold = dash_model(str(tmp_path), run_seed=0, r=4, s=3)
    launch_loradash(cold)
    n = n_layers(cold)
    assert len(svd_calls) == n
    assert len(entries(tmp_path)) == n  # one entry per distinct weight
    svd_calls.clear()
    warm = dash_model(str(tmp_path), run_seed=1, r=2, s=5)
    launch_loradash(warm)
    assert svd_calls == []
    assert all(m.is_launched(a) for _, m, a in dash_layers(warm))


def test_cached_selection_is_bit_identical_to_uncached(tmp_path):
    uncached = dash_model(None)
    launch_loradash(uncached)
    expected = selections(uncached)
    for _ in ("cold", "warm"):
        model = dash_model(str(tmp_path))
        launch_loradash(model)
        assert_identical(selections(model), expected)


def test_select_with_a_precomputed_svd_is_identical():
    g = torch.Generator().manual_seed(0)
    W, B, A = (
        torch.randn(24, 16, generator=g),
        torch.randn(24, 3, generator=g),
        torch.randn(3, 16, generator=g),
    )
    update = loradash.LowRankUpdate(B=B, A=A, scaling=0.5)
    plain = loradash.select_task_specific_directions(W, update, 4)
    given = loradash.select_task_specific_directions(W, update, 4, svd=loradash.weight_svd(W))
    for field in ("indices", "change_rate", "U", "Vh", "singular_values"):
        assert torch.equal(getattr(plain, field), getattr(given, field))
    U, S, Vh = loradash.weight_svd(W.T)
    with pytest.raises(ValueError, match="svd of a 24 x 16 weight"):
        loradash.select_task_specific_directions(W, update, 4, svd=(U, S, Vh))


def corrupt_truncate(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])


def corrupt_garbage(path):
    open(path, "wb").write(b"\x00not a safetensors file" * 8)


def corrupt_payload(path):
    data = bytearray(open(path, "rb").read())
    data[-5] ^= 0xFF  # one flipped byte inside the tensors: the header still parses
    open(path, "wb").write(bytes(data))


def corrupt_shapes(path):
    # A well-formed entry with the right key and checksum field, but tensors of the wrong shape.
    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
    save_file({"U": torch.zeros(2, 2), "S": torch.zeros(2), "Vh": torch.zeros(2, 2)}, path, metadata=meta)


@pytest.mark.parametrize("corrupt", [corrupt_truncate, corrupt_garbage, corrupt_payload, corrupt_shapes])
def test_corrupt_entry_is_recomputed_and_replaced(tmp_path, svd_calls, corrupt, caplog):
    uncached = dash_model(None)
    launch_loradash(uncached)
    launch_loradash(dash_model(str(tmp_path)))
    victim = entries(tmp_path)[0]
    corrupt(victim)
    svd_calls.clear()
    model = dash_model(str(tmp_path))
    with caplog.at_level("WARNING", logger="loradash.svd_cache"):
        launch_loradash(model)
    assert len(svd_calls) == 1  # only the corrupt entry was recomputed
    assert "invalid" in caplog.text and os.path.basename(victim) in caplog.text
    assert_identical(selections(model), selections(uncached))
    svd_calls.clear()
    launch_loradash(dash_model(str(tmp_path)))  # the rewritten entry is valid again
    assert svd_calls == []


def test_entry_of_another_weight_is_stale_and_recomputed(tmp_path, svd_calls):
    model = dash_model(str(tmp_path))
    launch_loradash(model)
    first, second = entries(tmp_path)[:2]
    with open(first, "rb") as src, open(second, "wb") as dst:  # `second` now holds another weight's SVD
        dst.write(src.read())
    svd_calls.clear()
    again = dash_model(str(tmp_path))
    launch_loradash(again)
    assert len(svd_calls) == 1
    assert_identical(selections(again), selections(model))
    with safe_open(second, framework="pt") as f:  # overwritten with the right entry
        assert f.metadata()["weight_key"] == os.path.basename(second).split(".")[0]


def test_changed_base_weights_miss_the_cache(tmp_path, svd_calls):
    launch_loradash(dash_model(str(tmp_path), base_seed=0))
    svd_calls.clear()
    other = dash_model(str(tmp_path), base_seed=1)  # same architecture and name, different weights
    launch_loradash(other)
    assert len(svd_calls) == n_layers(other)
    uncached = dash_model(None, base_seed=1)
    launch_loradash(uncached)
    assert_identical(selections(other), selections(uncached))


def test_cache_holds_only_complete_safetensors_files(tmp_path):
    launch_loradash(dash_model(str(tmp_path)))
    names = [f for _, _, files in os.walk(tmp_path) for f in files]
    assert names and all(f.endswith(".cpu.safetensors") and not f.startswith(".tmp") for f in names)
    for path in entries(tmp_path):
        with safe_open(path, framework="pt") as f:
            assert set(f.keys()) == {"U", "S", "Vh"}
            assert all(f.get_slice(k).get_dtype() == "F32" for k in f.keys())


def test_cache_entries_are_keyed_by_weight_and_grouped_by_model(tmp_path):
    W = torch.randn(6, 4)
    cache = SVDCache(str(tmp_path), model_id="org/My Model")
    path = cache.path(W)
    assert path == os.path.join(str(tmp_path), "org--My--Model", f"{weight_key(W)}.cpu.safetensors")
    assert weight_key(W) == weight_key(W.clone()) != weight_key(W.to(torch.float64))
    assert weight_key(W) != weight_key(W.reshape(4, 6))
    U, S, Vh = cache.svd(W)
    assert os.path.isfile(path)
    for x, y in zip(cache.svd(W), (U, S, Vh), strict=True):
        assert torch.equal(x, y)


def test_unwritable_cache_does_not_stop_the_launch(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    model = dash_model(str(blocker / "cache"))
    with caplog.at_level("WARNING", logger="loradash.svd_cache"):
        assert launch_loradash(model) == n_layers(model)
    assert "Could not write SVD cache entry" in caplog.text


def test_config_field_env_variable_and_saved_config(tmp_path, monkeypatch):
    monkeypatch.delenv(SVD_CACHE_ENV, raising=False)
    assert LoraDashConfig(target_modules=TARGETS).svd_cache_dir is None
    monkeypatch.setenv(SVD_CACHE_ENV, str(tmp_path / "env"))
    assert LoraDashConfig(target_modules=TARGETS).svd_cache_dir == str(tmp_path / "env")
    assert LoraDashConfig(target_modules=TARGETS, svd_cache_dir="").svd_cache_dir == ""  # explicit off
    assert LoraDashConfig(target_modules=TARGETS, svd_cache_dir=tmp_path / "x").svd_cache_dir == str(
        tmp_path / "x"
    )
    with pytest.raises(TypeError, match="svd_cache_dir"):
        LoraDashConfig(target_modules=TARGETS, svd_cache_dir=3)
    monkeypatch.delenv(SVD_CACHE_ENV)

    # A machine-local runtime setting: never written to adapter_config.json, so folders saved with or without
    # it are the same, and older loradash versions (which reject unknown keys) still read them.
    model = dash_model(str(tmp_path / "cache"))
    model.save_pretrained(tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert "svd_cache_dir" not in saved
    assert LoraDashConfig.load(str(tmp_path / "adapter")).svd_cache_dir is None


def test_from_pretrained_before_the_launch_uses_the_cache_it_is_given(tmp_path, svd_calls):
    launch_loradash(dash_model(str(tmp_path / "cache")))
    dash_model(None).save_pretrained(tmp_path / "adapter")  # saved before the launch
    svd_calls.clear()
    resumed = loradash.from_pretrained(
        tiny_bert(), tmp_path / "adapter", is_trainable=True, svd_cache_dir=tmp_path / "cache"
    )
    assert launch_loradash(resumed) == n_layers(resumed)
    assert svd_calls == []


def test_an_old_config_without_the_field_still_loads(tmp_path, monkeypatch):
    monkeypatch.delenv(SVD_CACHE_ENV, raising=False)
    dash_model(None).save_pretrained(tmp_path)
    path = tmp_path / "adapter_config.json"
    data = json.loads(path.read_text())
    data.pop("svd_cache_dir", None)
    path.write_text(json.dumps(data))
    loaded = loradash.from_pretrained(tiny_bert(), tmp_path)
    assert loaded.peft_config["default"].svd_cache_dir is None
    assert all(m.dash_svd_cache[a] is None for _, m, a in dash_layers(loaded))
