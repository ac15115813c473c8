"""The host's share of a decode step: ``decode_static`` around a model whose forward costs next to nothing.

On a GPU with CUDA graphs the model's part of a decode step is one graph replay (``--replay-ms``, 4.3 ms by default:
a figure for SmolLM2-135M at 256 rows on an H200 quoted before this project's first GPU run, not measured by it; the
second H200 run in docs/performance.md measured 6.65 ms for a whole decode step, host included); what the CPU does
around it (the step's inputs, reading the chosen tokens back, stop checks, refilling and packing slots) is not
hidden behind it, since reading the tokens back waits for the replay. This bench runs the evaluator's decode loop
over ``--questions`` prompts with a countdown model (a prompt ending in token L generates L tokens, the last of them
the end-of-sequence id; its forward is a few tensor operations on a handful of numbers) and reports the median time
between two decode steps, the number of steps, and the projected evaluation time with a given replay time:

    python bench/decode_host.py --questions 1319 --slots 256 --replay-ms 4.3

Generation lengths: uniform between ``--min-new`` and ``--max-new``, and ``--truncated-share`` of the questions
running to ``--max-new`` (SmolLM2-135M-Instruct on GSM8K zero-shot: 8 questions, 1629 tokens at up to 256).

``--sets N [N ...]`` compares what a cell does today, one decode pass per evaluation set (each set's slots run
down to its last question), with one pass over all of them (the paper's cells: GSM8K test and six out-of-domain
sets, ``--sets 1319 1000 1319 395 508 562 600``), and prints the ratio of their decode steps.

A diagnostic, not a target benchmark: the default mode prints a projection with no baseline ratio; ``--sets``
prints one pass against one pass per set, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from slm_sweep.arguments import at_least, number_in  # noqa: E402
from slm_sweep.evaluate.decode import Decoding, LoopTimes, decode_static  # noqa: E402
from slm_sweep.evaluate.stopping import StopCheck  # noqa: E402

EOS = 0


class CountdownLM(torch.nn.Module):
    """Next token: the row's last token minus one, the end-of-sequence id (0) after 1. One layer of key/value
    states of four numbers goes through the cache as a real model's would."""

    def __init__(self, vocab_size: int):
        super().__init__()
        from transformers import LlamaConfig

        self.config = LlamaConfig(vocab_size=vocab_size, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                  num_attention_heads=2, num_key_value_heads=1)
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # the loop reads the device from the parameters
        self.decode_calls: list[float] = []  # perf_counter() at each one-token forward
        self.prefill_calls = 0

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=True, logits_to_keep=1,
                cache=None):
        rows, width = input_ids.shape
        if width == 1:
            self.decode_calls.append(time.perf_counter())
        else:
            self.prefill_calls += 1
        states = torch.zeros((rows, 1, width, 4))
        cache.update(states, states, 0)
        last = input_ids[:, -1]
        following = torch.where(last > 1, last - 1, torch.full_like(last, EOS))
        logits = torch.nn.functional.one_hot(following, self.config.vocab_size).float()
        return SimpleNamespace(logits=logits[:, None, :])


def make_rows(questions: int, prompt_tokens: tuple[int, int], new_tokens: tuple[int, int], truncated: float,
              vocab_size: int, seed: int) -> tuple[list[list[int]], list[int]]:
    rng = torch.Generator().manual_seed(seed)
    rows, planned = [], []
    for _ in range(questions):
        width = int(torch.randint(prompt_tokens[0], prompt_tokens[1] + 1, (1,), generator=rng))
        runs_out = float(torch.rand(1, generator=rng)) < truncated
        length = new_tokens[1] if runs_out else int(torch.randint(new_tokens[0], new_tokens[1], (1,), generator=rng))
        # the prompt's last token L counts down: L tokens, the last of them the end-of-sequence id
        last = vocab_size - 1 if runs_out else length
        rows.append([7] * (width - 1) + [last])
        planned.append(length)
    return rows, planned


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=at_least(1), default=1319)
    parser.add_argument("--slots", type=at_least(1), default=256)
    # a one-token prompt's prefill would read as a decode step
    parser.add_argument("--prompt-tokens", type=at_least(2), nargs=2, default=(100, 260), metavar=("MIN", "MAX"))
    parser.add_argument("--min-new", type=at_least(1), default=100)
    parser.add_argument("--max-new", type=at_least(2), default=256)
    parser.add_argument("--truncated-share", type=number_in(0, 1), default=0.25)
    parser.add_argument("--replay-ms", type=float, default=4.3, help="the model's time per decode step on the GPU")
    parser.add_argument("--threads", type=at_least(1), default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sets", type=at_least(1), nargs="+", default=None, metavar="N",
                        help="set sizes: one pass per set against one pass over all (ignores --questions)")
    parser.add_argument("--schedule", choices=("cuda", "cpu"), default="cuda",
                        help="the loop's schedule: a CUDA device's with graphs (refill once an eighth of the slots "
                             "are free, prefill them together, pack in halving steps) or this CPU's own")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.prompt_tokens[0] > args.prompt_tokens[1]:
        parser.error(f"--prompt-tokens {args.prompt_tokens[0]} {args.prompt_tokens[1]}: expected MIN MAX, MIN at "
                     "most MAX")
    if args.min_new >= args.max_new:
        parser.error(f"--min-new {args.min_new} must be below --max-new {args.max_new}: the lengths of the questions "
                     "that do not run to --max-new are drawn from --min-new up to, not including, --max-new")
    return args


def decode(rows: list[list[int]], planned: list[int], args: argparse.Namespace) -> dict:
    """The decode loop over ``rows`` with the countdown model, timed; checks every planned length."""
    model = CountdownLM(args.max_new + 2).eval()
    generated: dict[int, int] = {}
    settings = Decoding(max_new_tokens=args.max_new, stop_check=StopCheck(None, [], {EOS}), pad_id=EOS,
                        schedule_as="cuda" if args.schedule == "cuda" else None)
    times = LoopTimes()
    start = time.perf_counter()
    with torch.inference_mode():
        decode_static(model, rows, settings, lambda row, tokens: generated.__setitem__(row, len(tokens)),
                      slots=args.slots, times=times)
    seconds = time.perf_counter() - start
    if [generated[i] for i in range(len(rows))] != planned:
        raise SystemExit("the decode loop did not generate the planned lengths")
    if (times.decode_steps, times.prefill_forwards) != (len(model.decode_calls), model.prefill_calls):
        raise SystemExit(f"the loop's own profile counted {times.decode_steps} decode steps and "
                         f"{times.prefill_forwards} prefill forwards, the model saw {len(model.decode_calls)} "
                         f"and {model.prefill_calls}")
    gaps = [b - a for a, b in zip(model.decode_calls, model.decode_calls[1:])]
    if not gaps:
        raise SystemExit(f"{len(model.decode_calls)} decode steps: too few to time (raise --min-new or --questions)")
    step_s = statistics.median(gaps)
    steps = len(model.decode_calls)
    other_s = seconds - steps * step_s
    projected = steps * (step_s + args.replay_ms / 1000) + other_s
    return {"questions": len(rows), "slots": args.slots, "schedule": args.schedule, "new_tokens": sum(planned),
            "decode_steps": steps, "prefill_forwards": model.prefill_calls,
            "slot_occupancy": times.as_dict()["slot_occupancy"],
            "loop_seconds": round(seconds, 3), "host_ms_per_step": round(step_s * 1000, 3),
            "host_ms_per_step_p90": round((statistics.quantiles(gaps, n=10)[-1] if len(gaps) > 1 else step_s)
                                          * 1000, 3),
            "prefill_and_other_s": round(other_s, 3), "replay_ms": args.replay_ms,
            "projected_eval_s": round(projected, 2),
            "host_share_of_projection": round((steps * step_s + other_s) / projected, 3),
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def _rows(args: argparse.Namespace, questions: int, seed: int) -> tuple[list[list[int]], list[int]]:
    return make_rows(questions, tuple(args.prompt_tokens), (args.min_new, args.max_new), args.truncated_share,
                     args.max_new + 2, seed)


def main(argv=None) -> dict:
    args = parse_args(argv)
    result = decode(*_rows(args, args.questions, args.seed), args)
    print(f"{result['questions']} questions, {args.slots} slots: {result['new_tokens']} tokens in "
          f"{result['decode_steps']} decode steps; host {result['host_ms_per_step']:.2f} ms per step "
          f"(p90 {result['host_ms_per_step_p90']:.2f}), prefill and the rest {result['prefill_and_other_s']:.2f} s")
    print(f"projected with a {args.replay_ms} ms replay per step: {result['projected_eval_s']:.2f} s "
          f"(host {result['host_share_of_projection']:.0%} of it)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


def compare_sets(argv=None) -> dict:
    """One decode pass per set against one pass over the same questions together: decode steps, projections."""
    args = parse_args(argv)
    sets = [_rows(args, n, args.seed + i) for i, n in enumerate(args.sets)]
    separate = [decode(rows, planned, args) for rows, planned in sets]
    joined = decode([r for rows, _ in sets for r in rows], [p for _, planned in sets for p in planned], args)
    result = {"sets": args.sets, "slots": args.slots, "replay_ms": args.replay_ms, "new_tokens": joined["new_tokens"],
              "separate_steps": sum(r["decode_steps"] for r in separate),
              "separate_projected_s": round(sum(r["projected_eval_s"] for r in separate), 2),
              "one_pass_steps": joined["decode_steps"], "one_pass_projected_s": joined["projected_eval_s"]}
    result["steps_ratio"] = round(result["one_pass_steps"] / result["separate_steps"], 3)
    print(f"{len(args.sets)} sets, {sum(args.sets)} questions, {result['new_tokens']} tokens, {args.slots} slots: "
          f"one pass per set {result['separate_steps']} decode steps (projected {result['separate_projected_s']} s), "
          f"one pass over all {result['one_pass_steps']} (projected {result['one_pass_projected_s']} s): "
          f"{result['steps_ratio']:.2f}x the steps")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    options = parse_args()
    torch.set_num_threads(options.threads)
    compare_sets() if options.sets else main()
