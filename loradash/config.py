"""`LoraDashConfig`: a peft `LoraConfig` with LoRA-Dash's fields."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from peft import LoraConfig
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

from ._version import __version__
from .svd_cache import SVD_CACHE_ENV

__all__ = [
    "LoraDashConfig",
    "PRELAUNCH_CLOCKS",
    "DIRECTION_SELECTIONS",
    "LORADASH_PEFT_TYPE",
    "CONFIG_MARKER",
]

PRELAUNCH_CLOCKS = ("optimizer_step", "forward_call")
# How the launch picks the s directions: the paper's change rate, or one of two controls that ignore the
# pre-launch update (s directions drawn at random; the s largest singular values).
DIRECTION_SELECTIONS = ("change_rate", "random", "top_sigma")
# Written as `peft_type` in a saved adapter_config.json so that stock peft refuses the folder
# (it has no config class for this type) instead of silently loading it as plain LoRA without the dash term.
LORADASH_PEFT_TYPE = "LORADASH"
CONFIG_MARKER = "loradash_version"


@dataclass
class LoraDashConfig(LoraConfig):
    """Configuration of LoRA-Dash (Si et al., ICLR 2025) on top of peft's `LoraConfig`.

    Every `LoraConfig` field keeps its meaning (r, lora_alpha, lora_dropout, target_modules, ...); the LoRA
    branch is plain LoRA. The fields below add the dash phase.

    Args:
        num_directions: s in the paper: how many task-specific directions each adapted matrix amplifies,
            i.e. how many trainable scalars it gets (default 8, as the paper).
        prelaunch_steps: t in the paper: the length of the LoRA "pre-launch" phase, counted on
            `prelaunch_clock` (default 100).
        change_rate_eps: epsilon in the change rate |u_i^T dW v_i| / (sigma_i + eps) (the authors' code uses 0).
        prelaunch_clock: "optimizer_step" (default, the paper's "updates": the launch happens in
            `update_loradash(model, global_step)` once global_step >= t) or "forward_call" (the authors' code:
            each layer counts its own forward calls that run the adapter, evaluation passes, accumulation
            micro-batches and checkpoint recomputation included, but not calls of a merged layer or with adapters
            disabled, and launches at call t + 1; for fidelity studies only).
        svd_cache_dir: a folder where the launch keeps the SVD of every targeted base weight (safetensors, keyed
            by the base model's name and a hash of the weight; see `loradash.SVDCache`), so that other seeds,
            ranks or numbers of directions on the same base model skip the decompositions. Opt-in: None (default)
            takes the `LORADASH_SVD_CACHE` environment variable, read once when the config is built, and no
            cache if that is unset; "" disables it whatever the environment says. The selections are
            bit-identical to an uncached launch's on the same machine. A runtime setting like peft's
            `runtime_config`: it is not written to adapter_config.json (pass it to `loradash.from_pretrained`
            when resuming a checkpoint saved before the launch).
        direction_selection: how the launch picks the s directions among W's singular directions:
            "change_rate" (default, the paper: the top-s change rates of the pre-launch update), or a control
            that ignores that update: "random" (s distinct directions drawn uniformly, from a generator seeded by
            `selection_seed` and a hash of the layer's weight, so each matrix gets its own draw) or "top_sigma"
            (the s largest singular values, the principal directions PiSSA adapts).
        selection_seed: the seed of the "random" rule (ignored by the others).
        freeze_lora_after_launch: the "dash-only" variant (not the paper's method): after its launch a layer
            stops training LoRA's A and B (they keep their pre-launch values and stay in the update; the forward
            detaches them, so they get no gradient and an optimizer that skips gradient-less parameters, as
            torch's do after `zero_grad(set_to_none=True)`, leaves them alone); only the s scalars train.
        use_loradash: the peft variant switch; always True for this config.
        loradash_version: the loradash release that wrote adapter_config.json (set by `save_pretrained`).

    In memory `peft_type` is `PeftType.LORA`: peft builds, trains, saves and merges a LoRA-Dash adapter with its
    LoRA tuner (`LoraModel`), the dash term entering through the `LoraDashVariant` hooks. On disk
    adapter_config.json says `"peft_type": "LORADASH"`, which `import loradash` maps to this class in peft's
    config registry: with loradash imported, `peft.PeftConfig.from_pretrained`, `LoraDashConfig.from_pretrained`
    and `peft.PeftModel.from_pretrained` read the folder; without it stock peft refuses it (unknown type) instead
    of loading it as plain LoRA without the dash term.
    """

    use_loradash: bool = field(
        default=True,
        metadata={
            "is_lora_variant": True,
            "help": "Enable the LoRA-Dash variant (always True for this config).",
        },
    )
    num_directions: int = field(
        default=8, metadata={"help": "s: task-specific directions per adapted matrix."}
    )
    prelaunch_steps: int = field(default=100, metadata={"help": "t: length of the LoRA pre-launch phase."})
    change_rate_eps: float = field(default=1e-8, metadata={"help": "eps in the change-rate denominator."})
    prelaunch_clock: str = field(
        default="optimizer_step", metadata={"help": "What t counts: 'optimizer_step' or 'forward_call'."}
    )
    direction_selection: str = field(
        default="change_rate",
        metadata={"help": f"How the launch picks directions: one of {DIRECTION_SELECTIONS}."},
    )
    selection_seed: int = field(default=0, metadata={"help": "Seed of the 'random' direction selection."})
    freeze_lora_after_launch: bool = field(
        default=False,
        metadata={"help": "Dash-only: A and B stop training at the launch; only lambda trains."},
    )
    svd_cache_dir: str | None = field(
        default=None,
        metadata={"help": f"Folder caching the base weights' SVDs (None: ${SVD_CACHE_ENV} or no cache)."},
    )
    loradash_version: str | None = field(
        default=None, metadata={"help": "The loradash release that wrote this adapter_config.json."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.use_loradash:
            raise ValueError("LoraDashConfig.use_loradash must be True; use peft.LoraConfig for plain LoRA.")
        if isinstance(self.num_directions, bool) or not isinstance(self.num_directions, int):
            raise TypeError(f"num_directions must be an int, got {self.num_directions!r}")
        if self.num_directions < 1:
            raise ValueError(f"num_directions (s) must be >= 1, got {self.num_directions}")
        if isinstance(self.prelaunch_steps, bool) or not isinstance(self.prelaunch_steps, int):
            raise TypeError(f"prelaunch_steps must be an int, got {self.prelaunch_steps!r}")
        if self.prelaunch_steps < 0:
            raise ValueError(f"prelaunch_steps (t) must be >= 0, got {self.prelaunch_steps}")
        if not isinstance(self.change_rate_eps, (int, float)) or self.change_rate_eps < 0:
            raise ValueError(f"change_rate_eps must be a number >= 0, got {self.change_rate_eps!r}")
        if self.prelaunch_clock not in PRELAUNCH_CLOCKS:
            raise ValueError(
                f"prelaunch_clock must be one of {PRELAUNCH_CLOCKS}, got {self.prelaunch_clock!r}"
            )
        if self.direction_selection not in DIRECTION_SELECTIONS:
            raise ValueError(
                f"direction_selection must be one of {DIRECTION_SELECTIONS}, got {self.direction_selection!r}"
            )
        if isinstance(self.selection_seed, bool) or not isinstance(self.selection_seed, int):
            raise TypeError(f"selection_seed must be an int, got {self.selection_seed!r}")
        if not isinstance(self.freeze_lora_after_launch, bool):
            raise TypeError(f"freeze_lora_after_launch must be a bool, got {self.freeze_lora_after_launch!r}")
        if self.fan_in_fan_out:
            raise ValueError(
                "LoRA-Dash supports nn.Linear targets only; fan_in_fan_out=True (transformers Conv1D, e.g. GPT-2) "
                "is not supported."
            )
        if self.use_dora:
            raise ValueError("LoRA-Dash cannot be combined with DoRA (use_dora=True).")
        if self.target_parameters:
            raise ValueError(
                "LoRA-Dash adapts nn.Linear modules (target_modules); target_parameters is not supported."
            )
        if self.svd_cache_dir is None:
            self.svd_cache_dir = os.environ.get(SVD_CACHE_ENV) or None
        elif isinstance(self.svd_cache_dir, os.PathLike):
            self.svd_cache_dir = os.fspath(self.svd_cache_dir)
        elif not isinstance(self.svd_cache_dir, str):
            raise TypeError(f"svd_cache_dir must be a path or None, got {self.svd_cache_dir!r}")
        # Every nn.Linear target becomes a DashLinear (peft's custom-module hook, experimental in 0.21), any other
        # target is refused with its name. Registered by the config itself, so that peft's own entry points
        # (get_peft_model, PeftModel.from_pretrained, TRL's SFTTrainer(peft_config=...)) build LoRA-Dash layers.
        from .layer import LAYER_MAPPING

        self._register_custom_module(LAYER_MAPPING)

    def to_dict(self) -> dict[str, Any]:
        """The fields saved to adapter_config.json: all but the machine-local `svd_cache_dir`."""
        data = super().to_dict()
        data.pop("svd_cache_dir", None)
        return data

    def save_pretrained(self, save_directory: str, **kwargs: Any) -> None:
        """Write adapter_config.json with `peft_type` = "LORADASH".

        Stock peft then refuses the folder with an unknown-type error rather than loading it as plain LoRA;
        with loradash imported peft reads it (and `loradash.from_pretrained`), and `loradash.export_as_lora`
        writes a stock-peft folder. Called by `PeftModel.save_pretrained` after the weights are written, it also
        adds the LoRA-Dash section to the model card peft wrote and warns (`LoraDashWarning`) when the adapter
        saved has trained but not launched (`loradash.card`).
        """
        super().save_pretrained(save_directory, **kwargs)
        path = os.path.join(save_directory, "adapter_config.json")
        with open(path) as f:
            data = json.load(f)
        data["peft_type"] = LORADASH_PEFT_TYPE
        data[CONFIG_MARKER] = __version__
        with open(path, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
        from .card import adapter_status, update_model_card, warn_if_unlaunched

        status = adapter_status(save_directory, self.init_lora_weights)
        update_model_card(save_directory, self, status)
        warn_if_unlaunched(status, self, "saved")

    @classmethod
    def load(cls, directory: str) -> LoraDashConfig:
        """Read a LoRA-Dash adapter_config.json written by `save_pretrained`."""
        path = os.path.join(directory, "adapter_config.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No adapter_config.json in {directory!r}")
        with open(path) as f:
            data = json.load(f)
        if data.get("peft_type") != LORADASH_PEFT_TYPE:
            raise ValueError(
                f"{path} is not a LoRA-Dash adapter (peft_type={data.get('peft_type')!r}); "
                "load plain peft adapters with peft.PeftModel.from_pretrained"
            )
        data["peft_type"] = "LORA"
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown LoraDashConfig keys {unknown} (written by a newer loradash?)")
        return cls(**data)


def _register_peft_type() -> None:
    """Map the on-disk `peft_type` "LORADASH" to `LoraDashConfig` in peft's config registry, which
    `PeftConfig.from_pretrained` and `PeftModel.from_pretrained` read. peft's public `register_peft_method` cannot
    be used: it requires a member of its closed `PeftType` enum and registers a tuner of its own, whereas LoRA-Dash
    runs on peft's LoRA tuner (so in memory the config is `PeftType.LORA`). `PeftType` is a `str` enum, so the
    plain string key sits beside peft's own (tests/test_peft_native.py guards this)."""
    registered = PEFT_TYPE_TO_CONFIG_MAPPING.get(LORADASH_PEFT_TYPE)  # type: ignore[call-overload]
    if registered is not None and registered.__module__ != __name__:
        raise RuntimeError(
            f"peft_type {LORADASH_PEFT_TYPE!r} is already registered by {registered.__module__}"
        )
    PEFT_TYPE_TO_CONFIG_MAPPING[LORADASH_PEFT_TYPE] = LoraDashConfig  # type: ignore[index]


_register_peft_type()
