"""LoRA-Dash layer contract: parity with peft LoRA before the launch, the launch clock, what trains."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

import loradash
from loradash import LoraDashConfig, dash_layers, get_loradash_model, update_loradash
from tests.helpers import BERT_TARGETS, dash_config, tiny_bert, tiny_llama, train_steps


def lora_config(**kw):
    base = dict(r=4, lora_alpha=8, target_modules=BERT_TARGETS)
    base.update(kw)
    return LoraConfig(**base)


def launched(model) -> list[bool]:
    return [m.is_launched(a) for _, m, a in dash_layers(model)]


def test_prelaunch_matches_peft_lora_outputs_and_grads(batch):
    torch.manual_seed(0)
    lora = get_peft_model(tiny_bert(), lora_config())
    torch.manual_seed(0)
    dash = get_loradash_model(tiny_bert(), dash_config())
    # Make B non-zero so gradients flow through both factors.
    for (n1, p1), (n2, p2) in zip(
        lora.named_parameters(), [x for x in dash.named_parameters() if "dash" not in x[0]], strict=True
    ):
        assert n1 == n2
        if "lora_B" in n1:
            torch.nn.init.normal_(p1, std=0.1)
            p2.data.copy_(p1.data)
    out_l, out_d = lora(**batch), dash(**batch)
    # same function up to fp32 rounding: the fused forward scales the rank-(r+s) activations, peft the output
    torch.testing.assert_close(out_d.logits, out_l.logits, rtol=1e-6, atol=1e-6)
    out_l.loss.backward()
    out_d.loss.backward()
    grads_l = {n: p.grad for n, p in lora.named_parameters() if p.requires_grad}
    for n, p in dash.named_parameters():
        if "lora_dash_lambda" in n:
            assert p.requires_grad and torch.equal(
                p.grad, torch.zeros_like(p)
            )  # exactly zero before the launch
        elif p.requires_grad:
            torch.testing.assert_close(p.grad, grads_l[n], rtol=1e-5, atol=1e-7)


def test_launch_at_exactly_t_optimizer_steps(batch):
    model = get_loradash_model(tiny_bert(), dash_config(prelaunch_steps=3))
    seen = []
    train_steps(
        model, batch, 5, on_step=lambda s: (update_loradash(model, s), seen.append(all(launched(model))))
    )
    assert seen == [False, False, True, True, True]


def test_gradient_accumulation_and_eval_do_not_move_the_default_clock(batch):
    model = get_loradash_model(tiny_bert(), dash_config(prelaunch_steps=2))
    seen = []

    def on_step(step):
        with torch.no_grad():  # evaluation passes between updates
            for _ in range(3):
                model.eval()(**batch)
        model.train()
        update_loradash(model, step)
        seen.append(all(launched(model)))

    train_steps(model, batch, 3, micro_batches=4, on_step=on_step)
    assert seen == [False, True, True]


def test_gradient_checkpointing_does_not_move_the_default_clock():
    model = tiny_llama()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    cfg = LoraDashConfig(r=2, target_modules=["q_proj", "v_proj"], num_directions=2, prelaunch_steps=2)
    model = get_loradash_model(model, cfg)
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    seen = []
    train_steps(
        model,
        {"input_ids": ids, "labels": ids},
        3,
        on_step=lambda s: (update_loradash(model, s), seen.append(all(launched(model)))),
    )
    assert seen == [False, True, True]


def test_t_zero_launches_at_the_first_call_and_again_is_noop(batch):
    model = get_loradash_model(tiny_bert(), dash_config(prelaunch_steps=0))
    n_layers = len(list(dash_layers(model)))
    assert update_loradash(model, 0) == n_layers
    before = {n: b.clone() for n, b in model.named_buffers() if "lora_dash_U" in n}
    assert update_loradash(model, 0) == 0 and update_loradash(model, 7) == 0
    for n, b in model.named_buffers():
        if n in before:
            assert torch.equal(before[n], b)


def test_forward_call_clock_reproduces_the_authors(batch):
    """Authors' code: each layer counts its forward calls and selects at call t + 1 with the weights it sees.

    With t = 5 and 2 micro-batches per step plus one evaluation pass after step 1, call 6 is the first
    micro-batch of step 3 (calls: step1 = 1,2; eval = 3; step2 = 4,5; step3 = 6,...), so the directions must be
    those of the weights after step 2, and update_loradash must not interfere.
    """
    model = get_loradash_model(tiny_bert(), dash_config(prelaunch_steps=5, prelaunch_clock="forward_call"))
    snapshots = {}

    def on_step(step):
        if step == 1:
            with torch.no_grad():
                model.eval()(**batch)
            model.train()
        if step == 2:
            snapshots["after2"] = copy.deepcopy(model)
        update_loradash(model, 100)  # ignored by forward-call layers
        snapshots[step] = all(launched(model))

    train_steps(model, batch, 3, micro_batches=2, on_step=on_step)
    assert [snapshots[s] for s in (1, 2, 3)] == [False, False, True]
    reference = snapshots["after2"]
    assert not any(launched(reference))
    loradash.launch_loradash(reference)
    for (_, m, a), (_, r, _) in zip(dash_layers(model), dash_layers(reference), strict=True):
        assert torch.equal(m.lora_dash_indices[a], r.lora_dash_indices[a])
        assert int(m.lora_dash_forward_calls[a]) == 7


def test_forward_call_clock_skips_merged_and_disabled_forwards(batch):
    """A merged layer, or one whose adapters are disabled, computes the base layer alone: the adapter does not
    run, so the call does not advance the forward-call clock (the authors' counter sits in the branch that applies
    the unmerged adapter, METHOD.md). Evaluation passes of the unmerged adapter still count, as in their code.
    Counting merged calls would also launch inside a merged forward, which must not happen."""
    model = get_loradash_model(tiny_bert(), dash_config(prelaunch_steps=2, prelaunch_clock="forward_call"))

    def calls() -> set[int]:
        return {int(m.lora_dash_forward_calls[a]) for _, m, a in dash_layers(model)}

    model.eval()
    with torch.no_grad():
        model(**batch)  # an evaluation pass of the adapter: call 1
        assert calls() == {1}
        model.merge_adapter()
        for _ in range(3):
            model(**batch)
        assert calls() == {1} and not any(launched(model))
        model.unmerge_adapter()
        with model.disable_adapter():
            model(**batch)
        assert calls() == {1} and not any(launched(model))
        model(**batch)  # call 2
        assert not any(launched(model))
        model(**batch)  # call 3 = t + 1: launches at its start
    assert calls() == {3} and all(launched(model))


def test_after_launch_only_adapter_params_change(batch):
    model = get_loradash_model(tiny_bert(), dash_config(prelaunch_steps=1, modules_to_save=["classifier"]))
    train_steps(model, batch, 1, on_step=lambda s: update_loradash(model, s))
    before = {n: t.detach().clone() for n, t in model.state_dict().items()}
    train_steps(model, batch, 3, on_step=lambda s: update_loradash(model, s + 1))
    after = model.state_dict()
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    for n in changed:
        assert "lora_A" in n or "lora_B" in n or "lora_dash_lambda" in n or "modules_to_save" in n, n
    assert any("lora_dash_lambda" in n for n in changed)
    assert any("modules_to_save" in n for n in changed)
    assert not any("lora_dash_U" in n or "lora_dash_Vh" in n or "base_layer" in n for n in changed)


def test_no_tensor_added_or_frozen_during_training(batch):
    model = get_loradash_model(tiny_bert(), dash_config(prelaunch_steps=1))
    params = {n: (id(p), p.requires_grad) for n, p in model.named_parameters()}
    train_steps(model, batch, 3, on_step=lambda s: update_loradash(model, s))
    assert {n: (id(p), p.requires_grad) for n, p in model.named_parameters()} == params


def test_dash_term_is_two_skinny_products(batch):
    # a launched layer with non-zero lambda equals the literal formula W x + s B A x + U diag(l) Vh x
    model = get_loradash_model(tiny_bert(), dash_config(prelaunch_steps=0))
    update_loradash(model, 0)
    name, layer, a = next(iter(dash_layers(model)))
    torch.nn.init.normal_(layer.lora_B[a].weight, std=0.1)
    torch.nn.init.normal_(layer.lora_dash_lambda[a].weight)
    x = torch.randn(5, layer.in_features)
    W = layer.get_base_layer().weight
    expected = (
        x @ W.T
        + layer.get_base_layer().bias
        + layer.scaling[a] * x @ layer.lora_A[a].weight.T @ layer.lora_B[a].weight.T
        + x @ (layer.lora_dash_U[a] @ torch.diag(layer.lora_dash_lambda[a].weight) @ layer.lora_dash_Vh[a]).T
    )
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "factory,targets",
    [(tiny_bert, BERT_TARGETS), (tiny_llama, ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"])],
)
def test_trainable_count_is_lora_plus_s_per_matrix(factory, targets):
    lora = get_peft_model(factory(), LoraConfig(r=4, target_modules=targets))
    dash = get_loradash_model(factory(), LoraDashConfig(r=4, target_modules=targets, num_directions=3))
    n_l = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    n_d = sum(p.numel() for p in dash.parameters() if p.requires_grad)
    assert n_d == n_l + 3 * len(list(dash_layers(dash)))


def test_diffusers_style_attention_targets():
    class Attention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.to_q, self.to_k, self.to_v = (torch.nn.Linear(16, 16) for _ in range(3))
            self.to_out = torch.nn.ModuleList([torch.nn.Linear(16, 16), torch.nn.Dropout(0.0)])

        def forward(self, x):
            return self.to_out[0](self.to_q(x) + self.to_k(x) + self.to_v(x))

    model = get_loradash_model(
        Attention(),
        LoraDashConfig(
            r=4,
            lora_alpha=4,
            init_lora_weights="gaussian",
            target_modules=["to_q", "to_k", "to_v", "to_out.0"],
            num_directions=2,
            prelaunch_steps=0,
        ),
    )
    assert len(list(dash_layers(model))) == 4
    assert update_loradash(model, 0) == 4
    assert model(torch.randn(3, 16)).shape == (3, 16)


def test_dash_only_freezes_lora_after_the_launch_and_trains_the_scalars(batch):
    """freeze_lora_after_launch: A and B train before the launch, keep their values after it (no gradient, so
    the optimizer skips them) and still act in the update; only lambda (and the head) moves."""
    model = get_loradash_model(tiny_bert(), dash_config(prelaunch_steps=2, freeze_lora_after_launch=True))

    def lora():
        return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n or "lora_B" in n}

    start = lora()
    opt = train_steps(model, batch, 2, on_step=lambda s: update_loradash(model, s))
    at_launch = lora()
    assert all(launched(model)) and any(not torch.equal(start[n], at_launch[n]) for n in start)
    lam = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_dash_lambda" in n}
    model(**batch).loss.backward()
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_A" in n or "lora_B" in n)
    opt.step()
    assert all(torch.equal(p, at_launch[n]) for n, p in model.named_parameters() if n in at_launch)
    assert any(not torch.equal(p, lam[n]) for n, p in model.named_parameters() if n in lam)


def test_dash_only_before_the_launch_is_plain_loradash(batch):
    a = get_loradash_model(tiny_bert(), dash_config(prelaunch_steps=3, freeze_lora_after_launch=True))
    b = get_loradash_model(tiny_bert(), dash_config(prelaunch_steps=3))
    b.load_state_dict(a.state_dict())
    for m in (a, b):
        train_steps(m, batch, 2, on_step=lambda s, m=m: update_loradash(m, s))
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=n)


@pytest.mark.parametrize("bad", [{"direction_selection": "sigma"}, {"freeze_lora_after_launch": 1},
                                 {"selection_seed": 1.5}])  # fmt: skip
def test_selection_and_dash_only_settings_are_validated(bad):
    with pytest.raises((ValueError, TypeError)):
        dash_config(**bad)
