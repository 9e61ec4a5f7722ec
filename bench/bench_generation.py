"""Paper-protocol evaluation throughput, batched against batch size 1, on the tiny LLaMA of the tests.

Runs `experiments.commonsense_llm.generation.evaluate_generation` (4-beam search, 32 new tokens) over the
fixture items, cycled to `--items`, once at batch size 1 (how the reference's scripts run) and once at
`--batch-size` (default 16), checks that every output and every extracted answer is identical, and
prints the speed-up (target >= 8x at batch 16).  Exits 1 if any answer differs; the speed-up target is
reported, not enforced, since it depends on the machine.

It also times the prompt pass alone (``max_new_tokens=1``).  That work (4 beams x prompt tokens per item)
is the same at every batch size and compute-bound on a CPU, so it caps the speed-up there; the decoding
steps, which batching amortises, are reported separately.  On a GPU (``--device cuda``) both phases are
launch-bound for this model and the end-to-end figure is the one to read.

    .venv/bin/python bench/bench_generation.py [--items 96] [--batch-size 16] [--greedy] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch

# The tiny model and tokenizer are the ones the tests prove batch-invariant; reuse them rather than a copy.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from experiments.commonsense_llm.generation import GenerationResult, evaluate_generation  # noqa: E402
from tests.helpers import tiny_causal_lm  # noqa: E402

TARGET_SPEEDUP = 8.0


def timed(
    model, tokenizer, examples, *, batch_size: int, greedy: bool, max_new_tokens: int = 32
) -> tuple[GenerationResult, float]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = evaluate_generation(
        model, tokenizer, examples, batch_size=batch_size, greedy=greedy, max_new_tokens=max_new_tokens
    )
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=96, help="examples to evaluate (fixture items, cycled)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--greedy", action="store_true", help="greedy decoding instead of 4-beam search")
    parser.add_argument(
        "--train-steps", type=int, default=30, help="steps teaching the tiny model the format"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (tiny model: 1 is fastest)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model, tokenizer, fixtures = tiny_causal_lm(train_steps=args.train_steps)
    model.to(args.device)
    examples = list(itertools.islice(itertools.cycle(fixtures), args.items))
    evaluate_generation(model, tokenizer, examples[:2], batch_size=2, max_new_tokens=2)  # warm-up

    run = {"greedy": args.greedy}
    one, t_one = timed(model, tokenizer, examples, batch_size=1, **run)
    many, t_many = timed(model, tokenizer, examples, batch_size=args.batch_size, **run)
    _, p_one = timed(model, tokenizer, examples, batch_size=1, max_new_tokens=1, **run)
    _, p_many = timed(model, tokenizer, examples, batch_size=args.batch_size, max_new_tokens=1, **run)
    same_outputs = many.outputs == one.outputs
    same_answers = many.predictions == one.predictions
    speedup = t_one / t_many
    decode_speedup = max(t_one - p_one, 1e-9) / max(t_many - p_many, 1e-9)

    decoding = "greedy" if args.greedy else "4-beam"
    device = f"cpu x{torch.get_num_threads()} threads" if args.device == "cpu" else args.device
    verdict = "met" if speedup >= TARGET_SPEEDUP else "missed"
    n = len(examples)
    print(f"tiny LLaMA (2 layers, hidden 32), {device}, {decoding}, 32 new tokens, {n} items")
    print(f"  batch 1:    {t_one:7.2f} s  ({n / t_one:6.1f} items/s; prompt pass alone {p_one:.2f} s)")
    print(
        f"  batch {args.batch_size:<4d} {t_many:7.2f} s  ({n / t_many:6.1f} items/s; prompt pass alone {p_many:.2f} s)"
    )
    print(f"  speed-up:   {speedup:7.2f}x  (target >= {TARGET_SPEEDUP:.0f}x: {verdict})")
    print(f"  decoding steps alone: {decode_speedup:.2f}x")
    print(f"  identical answers: {same_answers}, identical outputs: {same_outputs}")
    print(
        f"  accuracy {one.accuracy:.3f}, no-answer rate {one.no_answer_rate:.3f} (tiny model; not a result)"
    )
    record = {
        "items": n,
        "batch_size": args.batch_size,
        "decoding": decoding,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "seconds_batch_1": t_one,
        "seconds_batched": t_many,
        "seconds_prompt_pass_batch_1": p_one,
        "seconds_prompt_pass_batched": p_many,
        "speedup": speedup,
        "decode_speedup": decode_speedup,
        "identical_answers": same_answers,
        "identical_outputs": same_outputs,
    }
    print(json.dumps(record))
    return 0 if same_answers and same_outputs else 1


if __name__ == "__main__":
    sys.exit(main())
