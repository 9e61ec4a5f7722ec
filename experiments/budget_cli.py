"""`python -m experiments budget`: ranks of the other methods at 1x, 8x and 16x a method's trainable count."""

from __future__ import annotations

from baselines import available_methods, build_method, get_method
from baselines.budget import base_param_count, matched_ranks, target_layer_shapes
from experiments.config import load_experiment


def print_budget(family: str, method: str, rank: int, experiment: str | None) -> None:
    from experiments.commonsense.family import CommonsenseRun  # builds the family's model from its config

    name = experiment or f"{method}-r{rank}"
    cfg = load_experiment(family, name) if experiment else load_experiment(family, "lora-r1")
    model = CommonsenseRun(cfg).build_model()
    shapes = target_layer_shapes(model, list(cfg.model.target_modules))
    total = base_param_count(model, list(cfg.model.modules_to_save))
    ref = build_method(method, r=rank) if get_method(method).has_rank() else build_method(method)
    ref_count = type(ref).analytic_trainable(shapes, ref.rank, total, **ref.params)
    others = [m for m in available_methods() if m != method]
    table = matched_ranks(method, rank, shapes, total, others=others, max_rank=min(min(s) for s in shapes))
    print(f"{cfg.model.name}: {len(shapes)} target layers {sorted(set(shapes))}, base parameters {total:,}")
    print(f"reference: {method} r={rank}: {ref_count:,} trainable")
    for other, by_factor in table.items():
        for factor, row in by_factor.items():
            capped = " (capped)" if row.get("capped") else ""
            r = "-" if row["rank"] is None else row["rank"]
            print(
                f"  {other:<9} {factor:>4g}x  rank {r:>4}  {row['trainable']:>12,}  ratio {row['ratio']:.2f}{capped}"
            )
