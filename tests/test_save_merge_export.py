"""Merging, saving, loading and exporting LoRA-Dash adapters."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel

import loradash
from loradash import LoraDashConfig, dash_layers, get_loradash_model, update_loradash
from tests.helpers import dash_config, tiny_bert, tiny_llama, train_steps


def trained_dash(batch, *, steps=4, launch_at=2, **kw):
    model = get_loradash_model(
        tiny_bert(), dash_config(prelaunch_steps=launch_at, modules_to_save=["classifier"], **kw)
    )
    train_steps(model, batch, steps, on_step=lambda s: update_loradash(model, s))
    model.eval()
    return model


def test_merge_unmerge_exact(batch):
    model = trained_dash(batch)
    assert all(m.is_launched(a) for _, m, a in dash_layers(model))
    assert any(m.lora_dash_lambda[a].weight.abs().max() > 0 for _, m, a in dash_layers(model))
    weights = {n: m.get_base_layer().weight.detach().clone() for n, m, _ in dash_layers(model)}
    with torch.no_grad():
        unmerged = model(**batch).logits
        model.merge_adapter()
        merged = model(**batch).logits
        model.unmerge_adapter()
        again = model(**batch).logits
    torch.testing.assert_close(merged, unmerged, rtol=0, atol=1e-5)
    torch.testing.assert_close(again, unmerged, rtol=0, atol=1e-5)
    for n, m, _ in dash_layers(model):
        torch.testing.assert_close(m.get_base_layer().weight, weights[n], rtol=0, atol=1e-6)


def test_merge_and_unload(batch):
    model = trained_dash(batch)
    with torch.no_grad():
        expected = model(**batch).logits
        plain = model.merge_and_unload(safe_merge=True)
        torch.testing.assert_close(plain(**batch).logits, expected, rtol=0, atol=1e-5)
    assert not any("lora" in n for n, _ in plain.named_parameters())


@pytest.mark.parametrize("launch_at", [2, 100])
def test_save_then_from_pretrained_restores_everything(tmp_path, batch, launch_at):
    model = trained_dash(batch, launch_at=launch_at)
    model.save_pretrained(tmp_path)
    loaded = loradash.from_pretrained(tiny_bert(), tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, rtol=0, atol=0)
    for (_, a, ad), (_, b, bd) in zip(dash_layers(model), dash_layers(loaded), strict=True):
        assert a.is_launched(ad) == b.is_launched(bd) == (launch_at <= 4)
        assert torch.equal(a.lora_dash_indices[ad], b.lora_dash_indices[bd])
        assert torch.equal(a.lora_dash_U[ad], b.lora_dash_U[bd])
    assert isinstance(loaded.peft_config["default"], LoraDashConfig)
    assert loaded.peft_config["default"].prelaunch_steps == launch_at


def test_checkpoint_saved_before_launch_resumes(tmp_path, batch):
    model = trained_dash(batch, steps=2, launch_at=3)
    model.save_pretrained(tmp_path)
    resumed = loradash.from_pretrained(tiny_bert(), tmp_path, is_trainable=True)
    assert not any(m.is_launched(a) for _, m, a in dash_layers(resumed))
    assert any(p.requires_grad for n, p in resumed.named_parameters() if "lora_dash_lambda" in n)
    assert update_loradash(resumed, 2) == 0
    assert update_loradash(resumed, 3) == len(list(dash_layers(resumed)))
    update_loradash(model, 3)
    for (_, a, ad), (_, b, bd) in zip(dash_layers(model), dash_layers(resumed), strict=True):
        assert torch.equal(a.lora_dash_indices[ad], b.lora_dash_indices[bd])


def test_stock_peft_refuses_a_loradash_folder_until_loradash_is_imported(tmp_path, batch):
    import subprocess
    import sys

    trained_dash(batch).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORADASH"
    # A process that never imports loradash: stock peft has no config class for the type and refuses the folder
    # (rather than loading it as plain LoRA without the dash term).
    script = f"import peft\npeft.PeftConfig.from_pretrained({str(tmp_path)!r})"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode != 0 and "KeyError: 'LORADASH'" in out.stderr
    # Here loradash is imported: peft's own loader reads it (tests/test_peft_native.py checks the outputs).
    assert isinstance(PeftModel.from_pretrained(tiny_bert(), tmp_path).peft_config["default"], LoraDashConfig)


def test_from_pretrained_rejects_incomplete_or_foreign_folders(tmp_path, batch):
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file

    plain = get_peft_model(tiny_bert(), LoraConfig(r=2, target_modules=["query"]))
    plain.save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="not a LoRA-Dash adapter"):
        loradash.from_pretrained(tiny_bert(), tmp_path / "plain")
    trained_dash(batch).save_pretrained(tmp_path / "dash")
    f = tmp_path / "dash" / "adapter_model.safetensors"
    save_file({k: v for k, v in load_file(f).items() if "lora_dash_U" not in k}, f)
    with pytest.raises(ValueError, match="lacks"):
        loradash.from_pretrained(tiny_bert(), tmp_path / "dash")


@pytest.mark.parametrize("lora_bias", [False, True])
def test_export_as_lora_loads_in_stock_peft(tmp_path, batch, lora_bias):
    model = trained_dash(batch, lora_bias=lora_bias)
    loradash.export_as_lora(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 + 3 and config["lora_alpha"] == 4 + 3
    stock = PeftModel.from_pretrained(tiny_bert(), tmp_path)
    assert not any("dash" in n for n, _ in stock.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(stock(**batch).logits, model(**batch).logits, rtol=0, atol=1e-5)


def test_export_llama(tmp_path):
    targets = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
    model = get_loradash_model(
        tiny_llama(),
        LoraDashConfig(r=2, lora_alpha=4, target_modules=targets, num_directions=2, prelaunch_steps=1),
    )
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(0))
    train_steps(model, {"input_ids": ids, "labels": ids}, 3, on_step=lambda s: update_loradash(model, s))
    model.eval()
    loradash.export_as_lora(model, tmp_path)
    stock = PeftModel.from_pretrained(tiny_llama(), tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(
            stock(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=1e-5
        )
