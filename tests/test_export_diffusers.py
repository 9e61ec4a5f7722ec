"""export_as_lora(layout="diffusers"): stock diffusers loads the adapter into a UNet and reproduces LoRA-Dash."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

import loradash
from loradash import LoraDashConfig, dash_layers, get_loradash_model, launch_loradash

diffusers = pytest.importorskip("diffusers")  # the `bench` extra; the library does not need it

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def tiny_unet(seed: int = 0):
    torch.manual_seed(seed)
    return diffusers.UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=12,
        attention_head_dim=4,
    ).eval()


def unet_inputs():
    g = torch.Generator().manual_seed(1)
    return {
        "sample": torch.randn(2, 4, 32, 32, generator=g),  # 32 x 32 latents
        "timestep": torch.tensor([10, 500]),
        "encoder_hidden_states": torch.randn(2, 5, 12, generator=g),
    }


def dash_unet():
    """A launched LoRA-Dash UNet with non-zero B and lambda, so both terms of the update matter."""
    model = get_loradash_model(
        tiny_unet(), LoraDashConfig(r=4, lora_alpha=8, target_modules=UNET_TARGETS, num_directions=2)
    )
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for _, m, a in dash_layers(model):
            m.lora_B[a].weight.copy_(0.2 * torch.randn(m.lora_B[a].weight.shape, generator=g))
        launch_loradash(model)
        for _, m, a in dash_layers(model):
            m.lora_dash_lambda[a].weight.copy_(torch.randn(m.lora_dash_lambda[a].weight.shape, generator=g))
    return model


def unet_output(unet) -> torch.Tensor:
    with torch.no_grad():
        return unet(**unet_inputs()).sample


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = dash_unet()
    directory = tmp_path_factory.mktemp("diffusers_lora")
    loradash.export_as_lora(model, directory, layout="diffusers")
    base = unet_output(tiny_unet())
    expected = unet_output(model)
    assert (expected - base).abs().max() > 1e-2  # the adapter changes the output
    return directory, expected


def test_unet_load_lora_adapter_reproduces_loradash(exported):
    directory, expected = exported
    unet = tiny_unet()
    unet.load_lora_adapter(directory, weight_name="pytorch_lora_weights.safetensors", prefix="unet")
    torch.testing.assert_close(unet_output(unet), expected, rtol=0, atol=1e-5)


def test_sdxl_pipeline_loader_path_reproduces_loradash(exported):
    # What StableDiffusionXLPipeline.load_lora_weights(directory) does, without building the whole pipeline.
    from diffusers import StableDiffusionXLPipeline

    directory, expected = exported
    unet = tiny_unet()
    state_dict, network_alphas, metadata = StableDiffusionXLPipeline.lora_state_dict(
        directory, return_lora_metadata=True
    )
    assert all(k.startswith("unet.") for k in state_dict)
    StableDiffusionXLPipeline.load_lora_into_unet(state_dict, network_alphas, unet=unet, metadata=metadata)
    torch.testing.assert_close(unet_output(unet), expected, rtol=0, atol=1e-5)


def test_diffusers_file_layout(exported):
    directory, _ = exported
    assert sorted(p.name for p in directory.iterdir()) == ["pytorch_lora_weights.safetensors"]
    with safe_open(str(directory / "pytorch_lora_weights.safetensors"), framework="pt") as f:
        keys = list(f.keys())
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
        rank = f.get_tensor(next(k for k in keys if k.endswith("lora_B.weight"))).shape[1]
    assert all(k.startswith("unet.") and ".lora_" in k and "base_model" not in k for k in keys)
    assert rank == meta["unet.r"] == meta["unet.lora_alpha"] == 4 + 2  # r + s, scaling 1
    assert len(meta["unet.target_modules"]) == len(keys) // 2


def test_diffusers_layout_rejects_extra_weights_and_bad_arguments(tmp_path):
    model = get_loradash_model(
        tiny_unet(),
        LoraDashConfig(r=2, target_modules=UNET_TARGETS, num_directions=1, modules_to_save=["conv_out"]),
    )
    with pytest.raises(ValueError, match="LoRA factors only"):
        loradash.export_as_lora(model, tmp_path, layout="diffusers")
    with pytest.raises(ValueError, match="layout"):
        loradash.export_as_lora(model, tmp_path, layout="kohya")


def test_default_layout_of_a_diffusers_model_is_diffusers(tmp_path):
    """export_as_lora(unet, dir) with no layout: the file stock diffusers loads (a peft folder would load nothing)."""
    model = dash_unet()
    expected = unet_output(model)
    loradash.export_as_lora(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pytorch_lora_weights.safetensors"]
    unet = tiny_unet()
    unet.load_lora_adapter(tmp_path, weight_name="pytorch_lora_weights.safetensors", prefix="unet")
    torch.testing.assert_close(unet_output(unet), expected, rtol=0, atol=1e-5)


def test_a_model_that_only_holds_a_diffusers_module_must_name_its_layout(tmp_path):
    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unet = tiny_unet()

    model = get_loradash_model(
        Holder(), LoraDashConfig(r=2, target_modules=UNET_TARGETS, num_directions=1, prelaunch_steps=0)
    )
    with pytest.raises(ValueError, match=r"holds the diffusers module 'unet'.*pass layout='peft' or layout="):
        loradash.export_as_lora(model, tmp_path)
    with pytest.raises(ValueError, match=r"pass prefix="):
        loradash.export_as_lora(model, tmp_path, layout="diffusers")
    loradash.export_as_lora(model, tmp_path / "peft", layout="peft")
    assert (tmp_path / "peft" / "adapter_config.json").is_file()
