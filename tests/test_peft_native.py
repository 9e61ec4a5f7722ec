"""LoRA-Dash through peft's own entry points (get_peft_model, PeftConfig / PeftModel.from_pretrained, TRL's
SFTTrainer(peft_config=...), transformers.Trainer), every target form peft accepts, the automatic launch of the
optimizer-step hook (loradash.clock) and the warnings when a launch is missing, and the model card."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
from peft.tuners.lora import LoraLayer

import loradash
from loradash import (
    DashLinear,
    LoraDashConfig,
    LoraDashVariant,
    LoraDashWarning,
    dash_layers,
    get_loradash_model,
    set_auto_launch,
    update_loradash,
)
from tests.helpers import build_tiny_llama, build_tokenizer, tiny_bert, tiny_llama

LLAMA_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def llama_batch():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 64, (4, 10), generator=g)
    return {"input_ids": ids, "labels": ids}


def launched(model) -> list[bool]:
    return [m.is_launched(a) for _, m, a in dash_layers(model)]


def step(model, optimizer, batch, steps=1):
    model.train()
    for _ in range(steps):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def adamw(model, lr=1e-2):
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)


# --------------------------------------------------------------------------------------------------
# Building: peft.get_peft_model and the target forms


def test_get_peft_model_builds_loradash_layers_like_get_loradash_model():
    config = dict(r=4, target_modules=["q_proj", "v_proj"], num_directions=2)
    native = get_peft_model(tiny_llama(), LoraDashConfig(**config))
    explicit = get_loradash_model(tiny_llama(), LoraDashConfig(**config))
    layers = [m for m in native.modules() if isinstance(m, LoraLayer)]
    assert len(layers) == 4 and all(isinstance(m, DashLinear) for m in layers)
    assert all(isinstance(m.lora_variant["default"], LoraDashVariant) for m in layers)
    a, b = native.state_dict(), explicit.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "targets",
    [
        dict(target_modules="all-linear"),
        dict(target_modules=["q_proj", "down_proj"]),
        dict(target_modules=r".*\.self_attn\.(q|v)_proj"),
        dict(target_modules=["q_proj", "v_proj"], layers_to_transform=[1], layers_pattern="layers"),
        dict(target_modules="all-linear", exclude_modules=["o_proj", "gate_proj"]),
    ],
    ids=["all-linear", "names", "regex", "layers_to_transform", "exclude_modules"],
)
def test_every_target_form_adapts_what_plain_lora_adapts(targets):
    lora = get_peft_model(tiny_llama(), LoraConfig(r=2, **targets))
    dash = get_peft_model(tiny_llama(), LoraDashConfig(r=2, num_directions=2, **targets))
    expected = {n for n, m in lora.named_modules() if isinstance(m, LoraLayer)}
    assert expected and {n for n, _, _ in dash_layers(dash)} == expected


def test_all_linear_leaves_the_output_head_alone():
    dash = get_peft_model(tiny_llama(), LoraDashConfig(r=2, target_modules="all-linear", num_directions=2))
    names = {n.rsplit(".", 1)[-1] for n, _, _ in dash_layers(dash)}
    assert names == set(LLAMA_LINEAR)


def test_non_linear_targets_are_refused_by_name():
    with pytest.raises(TypeError, match=r"'model.embed_tokens' is a Embedding"):
        get_peft_model(tiny_llama(), LoraDashConfig(target_modules=["embed_tokens", "q_proj"]))
    with pytest.raises(ValueError, match="target_parameters is not supported"):
        LoraDashConfig(target_parameters=["weight"])


def test_the_config_registration_is_in_place():
    # The private surface this relies on: a str key beside PeftType members in peft's config registry, and the
    # custom-module mapping on every config (also one rebuilt from a dict, as peft does when loading).
    assert PEFT_TYPE_TO_CONFIG_MAPPING["LORADASH"] is LoraDashConfig
    assert PEFT_TYPE_TO_CONFIG_MAPPING["LORA"] is LoraConfig
    rebuilt = LoraDashConfig(**LoraDashConfig(r=2, target_modules=["q_proj"]).to_dict())
    assert rebuilt._custom_modules[torch.nn.Linear] is DashLinear
    assert rebuilt.peft_type == "LORA"


# --------------------------------------------------------------------------------------------------
# Loading: PeftConfig / LoraDashConfig / PeftModel.from_pretrained


@pytest.fixture
def saved(tmp_path):
    """A trained, launched LoRA-Dash LLaMA saved with save_pretrained; (folder, model, its eval outputs)."""
    model = get_peft_model(
        tiny_llama(), LoraDashConfig(r=4, target_modules="all-linear", num_directions=2, prelaunch_steps=2)
    )
    step(model, adamw(model), llama_batch(), steps=4)
    assert all(launched(model))
    model.save_pretrained(tmp_path)
    model.eval()
    with torch.no_grad():
        out = model(input_ids=llama_batch()["input_ids"]).logits
    return tmp_path, model, out


def test_config_from_pretrained_through_peft_and_loradash(saved):
    directory, model, _ = saved
    on_disk = json.loads((directory / "adapter_config.json").read_text())
    assert on_disk["peft_type"] == "LORADASH" and on_disk["loradash_version"] == loradash.__version__
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "unexpected keyword" warning for the version marker
        configs = [PeftConfig.from_pretrained(str(directory)), LoraDashConfig.from_pretrained(str(directory))]
    for config in configs:
        assert type(config) is LoraDashConfig and config.peft_type == "LORA"
        assert (config.r, config.num_directions, config.prelaunch_steps) == (4, 2, 2)
        assert {t.rsplit(".", 1)[-1] for t in config.target_modules} == set(
            LLAMA_LINEAR
        )  # all-linear, resolved


def test_peft_model_from_pretrained_reproduces_the_model(saved):
    directory, model, expected = saved
    loaded = PeftModel.from_pretrained(tiny_llama(), str(directory))
    assert all(launched(loaded)) and len(launched(loaded)) == len(launched(model))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=llama_batch()["input_ids"]).logits, expected)
    # and trainable again, from where it stopped
    resumed = PeftModel.from_pretrained(tiny_llama(), str(directory), is_trainable=True)
    assert any(p.requires_grad for n, p in resumed.named_parameters() if "lora_dash_lambda" in n)


# --------------------------------------------------------------------------------------------------
# The automatic launch (loradash.clock)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_plain_loop_launches_after_exactly_t_steps(optimizer):
    model = get_peft_model(tiny_llama(), LoraDashConfig(r=2, target_modules=["q_proj"], prelaunch_steps=3))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2) if optimizer == "adamw" else torch.optim.SGD(params, lr=1e-2)
    seen = []
    for _ in range(5):
        step(model, opt, llama_batch())
        seen.append(all(launched(model)))
    assert seen == [False, False, True, True, True]


def test_automatic_launch_equals_update_loradash_at_the_same_step():
    """The hook launches inside step t's optimizer.step(); a loop calling update_loradash(model, t) after it
    launches at the same point: the same directions and, after more steps, bit-identical weights."""
    models = []
    for manual in (False, True):
        model = get_peft_model(
            tiny_llama(), LoraDashConfig(r=2, target_modules="all-linear", prelaunch_steps=2)
        )
        opt = adamw(model)
        torch.manual_seed(0)
        for global_step in range(1, 6):
            step(model, opt, llama_batch())
            if manual:
                update_loradash(model, global_step)
        models.append(model)
    auto, manual = (m.state_dict() for m in models)
    assert all(launched(models[0])) and all(launched(models[1]))
    assert auto.keys() == manual.keys() and all(torch.equal(auto[k], manual[k]) for k in auto)


def test_update_loradash_takes_over_and_the_hook_never_launches():
    # t = 1: were the hook still in charge it would launch inside the first step, before the loop's call.
    model = get_peft_model(tiny_llama(), LoraDashConfig(r=2, target_modules=["q_proj"], prelaunch_steps=1))
    opt = adamw(model)
    set_auto_launch(model, False)
    step(model, opt, llama_batch())
    assert not any(launched(model))
    assert update_loradash(model, 1) == len(launched(model))
    assert update_loradash(model, 2) == 0  # once only


def test_the_harness_launch_is_its_own():
    """baselines' LoRA-Dash turns the hook's launch off: the records' launch step is the loop's, as before."""
    from baselines import build_method

    method = build_method("loradash", r=2, num_directions=2, prelaunch_steps=1)
    model = method.wrap(tiny_llama(), target_modules=["q_proj"], modules_to_save=[])
    opt = adamw(model)
    step(model, opt, llama_batch())
    assert not any(launched(model))  # the hook counted the step but did not launch
    method.on_optimizer_step(model, 1)
    assert all(launched(model))


def test_forgotten_update_loradash_warns_once_one_step_after_t():
    model = get_peft_model(tiny_llama(), LoraDashConfig(r=2, target_modules=["q_proj"], prelaunch_steps=2))
    opt = adamw(model)
    update_loradash(model, 0)  # took the launch over, then never called again
    with warnings.catch_warnings():
        warnings.simplefilter("error", LoraDashWarning)
        step(
            model, opt, llama_batch(), steps=2
        )  # step t: the caller's update_loradash(model, 2) may still come
    with pytest.warns(LoraDashWarning, match=r"trained 3 optimizer steps, past prelaunch_steps \(t\) = 2"):
        step(model, opt, llama_batch())
    with warnings.catch_warnings():
        warnings.simplefilter("error", LoraDashWarning)
        step(model, opt, llama_batch(), steps=2)  # once
    assert not any(launched(model))


def test_update_loradash_every_step_does_not_warn():
    model = get_peft_model(tiny_llama(), LoraDashConfig(r=2, target_modules=["q_proj"], prelaunch_steps=2))
    opt = adamw(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LoraDashWarning)
        for global_step in range(1, 6):
            step(model, opt, llama_batch())
            update_loradash(model, global_step)
    assert all(launched(model))


def test_resumed_optimizer_keeps_the_clock(tmp_path):
    """A run saved before the launch and resumed with its AdamW state launches at t, not t after the resume."""
    config = LoraDashConfig(r=2, target_modules=["q_proj"], prelaunch_steps=4)
    model = get_peft_model(tiny_llama(), config)
    opt = adamw(model)
    step(model, opt, llama_batch(), steps=2)
    with pytest.warns(LoraDashWarning, match="saved an adapter that has trained but not launched"):
        model.save_pretrained(tmp_path)
    opt_state = opt.state_dict()
    resumed = PeftModel.from_pretrained(tiny_llama(), str(tmp_path), is_trainable=True)
    opt = adamw(resumed)
    opt.load_state_dict(opt_state)
    step(resumed, opt, llama_batch())
    assert not any(launched(resumed))  # step 3
    step(resumed, opt, llama_batch())
    assert all(launched(resumed))  # step 4 = t


# --------------------------------------------------------------------------------------------------
# Saving and exporting an unlaunched model, and the model card


def test_saving_or_exporting_a_trained_unlaunched_model_warns(tmp_path):
    model = get_peft_model(tiny_llama(), LoraDashConfig(r=2, target_modules=["q_proj"], prelaunch_steps=50))
    with warnings.catch_warnings():
        warnings.simplefilter("error", LoraDashWarning)
        model.save_pretrained(tmp_path / "untrained")  # nothing trained yet: nothing to say
    step(model, adamw(model), llama_batch(), steps=2)
    with pytest.warns(
        LoraDashWarning, match=r"saved .* \(0 of 2 layers launched, prelaunch_steps \(t\) = 50"
    ):
        model.save_pretrained(tmp_path / "trained")
    with pytest.warns(LoraDashWarning, match="exporting an adapter that has trained but not launched"):
        loradash.export_as_lora(model, tmp_path / "export")
    loradash.launch_loradash(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LoraDashWarning)
        model.save_pretrained(tmp_path / "launched")
        loradash.export_as_lora(model, tmp_path / "export-launched")


def test_model_card_says_what_the_adapter_is_and_how_to_load_it(saved):
    directory, model, _ = saved
    card = (directory / "README.md").read_text()
    head = card.split("---")[1]
    assert "library_name: peft" in head and "- loradash" in head and "- lora\n" in head
    assert card.count("## LoRA-Dash adapter") == 1
    assert "arxiv.org/abs/2409.01035" in card and "All 14 adapted matrices have launched" in card
    assert (
        "import loradash" in card and 'PeftModel.from_pretrained(base_model, "path/to/this/folder")' in card
    )
    assert 'export_as_lora(model, "exported", layout="diffusers")' in card
    model.save_pretrained(directory)  # saving again keeps one section and one set of tags
    again = (directory / "README.md").read_text()
    assert again.count("## LoRA-Dash adapter") == 1 and again.split("---")[1].count("- loradash") == 1


# --------------------------------------------------------------------------------------------------
# Trainers: transformers.Trainer without the callback, TRL's SFTTrainer(peft_config=...)


def test_trainer_without_callback_launches_at_t(tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainerCallback, TrainingArguments

    g = torch.Generator().manual_seed(0)
    data = Dataset.from_dict(
        {
            "input_ids": torch.randint(0, 64, (32, 8), generator=g).tolist(),
            "labels": torch.randint(0, 2, (32,), generator=g).tolist(),
        }
    )
    model = get_peft_model(
        tiny_bert(),
        LoraDashConfig(r=4, target_modules=["query", "value"], num_directions=2, prelaunch_steps=3),
    )
    launched_at = []

    class Probe(TrainerCallback):  # observes only; the launch is the library's step hook
        def on_step_end(self, args, state, control, model=None, **kw):
            if all(launched(model)) and not launched_at:
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


def test_trl_sft_trainer_with_a_loradash_peft_config(tmp_path):
    trl = pytest.importorskip("trl")  # the `dev` extra
    from datasets import Dataset

    texts = [f"the answer to question {i} is {i % 7} because {i * 3} is odd" for i in range(48)]
    tokenizer = build_tokenizer(texts, vocab_size=300)
    tokenizer.pad_token = tokenizer.eos_token
    model = build_tiny_llama(len(tokenizer))
    config = LoraDashConfig(
        r=4,
        lora_alpha=8,
        target_modules="all-linear",
        num_directions=2,
        prelaunch_steps=2,
        task_type="CAUSAL_LM",
    )
    args = trl.SFTConfig(
        output_dir=str(tmp_path),
        max_steps=4,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        max_length=32,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        seed=0,
        dataset_num_proc=None,
    )
    trainer = trl.SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_dict({"text": texts}),
        processing_class=tokenizer,
        peft_config=config,
    )
    trainer.train()
    peft_model = trainer.model
    assert isinstance(peft_model, PeftModel) and isinstance(peft_model.peft_config["default"], LoraDashConfig)
    assert len(launched(peft_model)) == 2 * len(LLAMA_LINEAR) and all(launched(peft_model))
    assert any(m.lora_dash_lambda[a].weight.abs().max() > 0 for _, m, a in dash_layers(peft_model))
    trainer.save_model(str(tmp_path / "final"))
    loaded = PeftModel.from_pretrained(build_tiny_llama(len(tokenizer)), str(tmp_path / "final"))
    assert all(launched(loaded))
