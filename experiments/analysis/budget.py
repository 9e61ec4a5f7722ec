"""`python -m experiments budget`: ranks of the other methods at 1x, 8x and 16x a method's trainable count."""

from __future__ import annotations

from baselines import available_methods, build_method, get_method
from baselines.budget import base_param_count, matched_ranks, target_layer_shapes
from experiments.harness.config import load_experiment
from experiments.harness.loading import quiet_libraries


def print_budget(family: str, method: str, rank: int, experiment: str | None) -> None:
    from experiments.harness.config import list_experiments
    from experiments.harness.registry import get_family

    get_method(method)  # an unknown method lists the known ones before anything is built
    known = list_experiments(family)
    name = experiment or next((e for e in known if e.startswith("lora-")), known[0])
    cfg = load_experiment(family, name)
    with quiet_libraries():
        model = get_family(family)(cfg).build_model()  # builds the family's model from its config
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
