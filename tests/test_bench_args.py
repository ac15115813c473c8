"""The benchmarks' arguments: a size that cannot be measured, or a precision the plain loop does not reproduce,
is refused when the arguments are read, naming the option, the value and what is allowed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))


def _refused(parse, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        parse(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["--steps", "0"], "argument --steps: 0: expected a whole number of at least 1"),
    (["--steps", "-2"], "argument --steps: -2: expected a whole number of at least 1"),
    (["--warmup", "-1"], "argument --warmup: -1: expected a whole number of at least 0"),
    (["--batch-size", "0"], "argument --batch-size: 0: expected a whole number of at least 1"),
    (["--micro-batch-size", "0"], "argument --micro-batch-size: 0: expected a whole number of at least 1"),
    (["--micro-batch-tokens", "0"], "argument --micro-batch-tokens: 0: expected a whole number of at least 1"),
    (["--max-length", "0"], "argument --max-length: 0: expected a whole number of at least 1"),
    (["--repeats", "0"], "argument --repeats: 0: expected a whole number of at least 1"),
    (["--threads", "0"], "argument --threads: 0: expected a whole number of at least 1"),
    (["--steps", "2.5"], "argument --steps: '2.5' is not a whole number (expected one of at least 1)"),
])
def test_train_speed_refuses_a_size_it_cannot_measure(argv, message, capsys):
    import train_speed

    assert message in _refused(train_speed.parse_args, argv, capsys)


def test_train_speed_takes_no_warmup():
    import train_speed

    assert train_speed.parse_args(["--warmup", "0", "--steps", "1"]).warmup == 0


@pytest.mark.parametrize("precision", ["bf16-true", "16-mixed", "16-true", "16", "64-true"])
def test_train_speed_refuses_a_precision_the_plain_loop_does_not_reproduce(precision, capsys):
    """The plain loop trains float32 weights, under bf16 autocast for bf16-mixed: against bf16-true's bf16 weights
    or 16-mixed's fp16 autocast and gradient scaler its rate would be of other dtypes."""
    import train_speed

    err = _refused(train_speed.parse_args, ["--trainer-override", f"precision={precision}"], capsys)
    assert f"trainer precision '{precision}': the plain loop mirrors only 32-true (or 32), bf16-mixed (or bf16)" in err
    with pytest.raises(ValueError, match=f"'{precision}'"):
        train_speed.plain_loop_precision(precision)


@pytest.mark.parametrize(("precision", "name"), [("32-true", "32-true"), ("32", "32-true"), (32, "32-true"),
                                                 ("bf16-mixed", "bf16-mixed"), ("bf16", "bf16-mixed")])
def test_train_speed_takes_the_precisions_the_plain_loop_reproduces(precision, name):
    import train_speed

    assert train_speed.plain_loop_precision(precision) == name
    train_speed.parse_args(["--trainer-override", f"precision={precision}"])
    train_speed.parse_args(["--device", "cuda"])  # trainer=gpu: bf16-mixed


@pytest.mark.parametrize(("argv", "message"), [
    (["--designs", "3-1"], "argument --designs: '3-1': expected AxB, the seeds of A and of B, each a whole number of "
                           "at least 1 (e.g. 3x1)"),
    (["--designs", "3x1", "0x3"], "argument --designs: '0x3': expected AxB"),
    (["--designs", "3x"], "argument --designs: '3x': expected AxB"),
    (["--questions", "0"], "argument --questions: 0: expected a whole number of at least 1"),
    (["--reps", "0"], "argument --reps: 0: expected a whole number of at least 1"),
    (["--models", "0"], "argument --models: 0: expected a whole number of at least 1"),
    (["--seed-sds", "-0.1"], "argument --seed-sds: '-0.1': expected a number in [0, 1]"),
    (["--alphas", "0"], "argument --alphas: '0': expected a number in (0, 1)"),
    (["--effect", "2"], "argument --effect: '2': expected a number in [-1, 1]"),
])
def test_stats_calibration_refuses_a_design_or_size_it_cannot_simulate(argv, message, capsys):
    import stats_calibration

    assert message in _refused(stats_calibration.main, argv, capsys)


def test_stats_calibration_reads_its_designs(capsys):
    import stats_calibration

    stats_calibration.main(["--designs", "3x1", "2X2", "--questions", "20", "--reps", "3", "--seed-sds", "0.03",
                            "--alphas", "0.05"])
    out = capsys.readouterr().out
    assert "| 20 | 3 x 1 | 3 |" in out and "| 20 | 2 x 2 | 3 |" in out


@pytest.mark.parametrize(("argv", "message"), [
    (["--questions", "0"], "argument --questions: 0: expected a whole number of at least 1"),
    (["--questions", "-2"], "argument --questions: -2: expected a whole number of at least 1"),
    (["--rounds", "0"], "argument --rounds: 0: expected a whole number of at least 1"),
])
def test_eval_speed_refuses_a_size_it_cannot_measure(argv, message, capsys):
    """--questions -2 ran test[:-2] (1317 questions) before lm-eval crashed; --rounds 0 crashed after
    loading."""
    import eval_speed

    assert message in _refused(eval_speed.parse_args, argv, capsys)


@pytest.mark.parametrize(("argv", "message"), [
    (["--questions", "0"], "argument --questions: 0: expected a whole number of at least 1"),
    (["--slots", "0"], "argument --slots: 0: expected a whole number of at least 1"),
    (["--sets", "1319", "0"], "argument --sets: 0: expected a whole number of at least 1"),
])
def test_decode_host_refuses_a_size_it_cannot_measure(argv, message, capsys):
    """--slots 0 decoded with one slot and printed "0 slots"; --questions 0 crashed in max()."""
    import decode_host

    assert message in _refused(decode_host.parse_args, argv, capsys)


def test_eval_speed_says_identical_only_when_every_round_decoded_the_same(capsys):
    """Runs whose rounds disagree were folded to no outputs, which compared equal: "identical: yes"."""
    from eval_speed import Timed, median_run, report

    accuracy = {"strict": 0.0, "flexible": 0.0}
    steady = median_run([Timed("ours engine=static", 10, 10, ["a", "b"], accuracy)] * 2)
    unsteady = median_run([Timed("ours engine=cache", 9, 9, ["a", "Y"], accuracy),
                           Timed("ours engine=cache", 9, 9, ["Z", "b"], accuracy)])
    other = median_run([Timed("lm-eval batch_size=1", 20, 20, ["a", "c"], accuracy)])
    report([unsteady, steady], unsteady, 2)
    out = capsys.readouterr().out
    assert " yes" not in out
    assert "NO (its rounds differ)" in out and "NO (the reference's rounds differ)" in out
    report([steady, unsteady, other], steady, 2)
    rows = {line.split("  ")[0]: line for line in capsys.readouterr().out.splitlines()}
    assert rows["ours engine=static"].endswith(" yes")
    assert rows["ours engine=cache"].endswith("NO (its rounds differ)")
    assert rows["lm-eval batch_size=1"].endswith(" NO")
    assert steady.rounds_agree and not unsteady.rounds_agree and unsteady.outputs == ["a", "Y"]


def test_gpu_bundle_refuses_parts_before_it_rewrites_anything(monkeypatch, tmp_path, capsys):
    """build --parts 0 was refused only after .gpu/data and .gpu/smollm135 had been deleted and written again."""
    import gpu_bundle

    bundle = tmp_path / ".gpu"
    monkeypatch.setattr(gpu_bundle, "BUNDLE", bundle)
    (data_root := tmp_path / "data" / "gsm8k").mkdir(parents=True)
    (data_root / "test.jsonl").write_text("{}\n")
    for parts in ("0", "-1"):
        err = _refused(gpu_bundle.main, ["build", "--data-root", str(data_root.parent), "--parts", parts], capsys)
        assert f"argument --parts: {parts}: expected a whole number of at least 1" in err
    assert not bundle.exists()


@pytest.mark.parametrize(("argv", "message"), [
    (["--batch-size", "0"], "argument --batch-size: 0: expected a whole number of at least 1"),
    (["--length", "0"], "argument --length: 0: expected a whole number of at least 1"),
    (["--slots", "-1"], "argument --slots: -1: expected a whole number of at least 1"),
    (["--columns", "3"], "argument --columns: 3: expected a whole number of at least 4"),
])
def test_dispatch_count_refuses_a_shape_it_cannot_build(argv, message, capsys):
    """--batch-size 0 and --slots -1 crashed in torch after loading the model."""
    import dispatch_count

    assert message in _refused(dispatch_count.parse_args, argv, capsys)


@pytest.mark.parametrize(("argv", "message"), [
    (["--threads", "0"], "argument --threads: 0: expected a whole number of at least 1"),
    (["--prompt-tokens", "260", "100"], "--prompt-tokens 260 100: expected MIN MAX, MIN at most MAX"),
    (["--prompt-tokens", "1", "100"], "argument --prompt-tokens: 1: expected a whole number of at least 2"),
    (["--min-new", "300", "--max-new", "100"], "--min-new 300 must be below --max-new 100"),
    (["--min-new", "100", "--max-new", "100"], "--min-new 100 must be below --max-new 100"),
    (["--min-new", "0"], "argument --min-new: 0: expected a whole number of at least 1"),
    (["--truncated-share", "2"], "argument --truncated-share: '2': expected a number in [0, 1]"),
    (["--truncated-share", "-0.1"], "argument --truncated-share: '-0.1': expected a number in [0, 1]"),
])
def test_decode_host_refuses_lengths_and_shares_it_cannot_draw(argv, message, capsys):
    """--threads 0 and reversed ranges crashed in torch; --truncated-share 2 ran, every question truncated."""
    import decode_host

    assert message in _refused(decode_host.parse_args, argv, capsys)


def test_decode_host_takes_the_narrowest_ranges_it_can_draw():
    import decode_host

    args = decode_host.parse_args(["--prompt-tokens", "2", "2", "--min-new", "1", "--max-new", "2",
                                   "--truncated-share", "1", "--threads", "1"])
    assert (tuple(args.prompt_tokens), args.min_new, args.max_new, args.truncated_share) == ((2, 2), 1, 2, 1.0)


@pytest.mark.parametrize(("argv", "message"), [
    (["--max-new-tokens", "-5"], "argument --max-new-tokens: -5: expected a whole number of at least 1"),
    (["--engines", "static", "foo"], "argument --engines: invalid choice: 'foo' (choose from 'static', 'cache', "
                                     "'plain')"),
    (["--max-batch-size", "0"], "argument --max-batch-size: 0: expected a whole number of at least 1"),
    (["--token-budget", "0"], "argument --token-budget: 0: expected a whole number of at least 1"),
    (["--threads", "0"], "argument --threads: 0: expected a whole number of at least 1"),
])
def test_eval_speed_refuses_a_setting_before_it_loads_the_model(argv, message, capsys):
    """--max-new-tokens -5 and --engines foo failed after loading the model and data; --max-batch-size 0 ran,
    its timing labelled with a setting generate had clamped."""
    import eval_speed

    assert message in _refused(eval_speed.parse_args, argv, capsys)


@pytest.mark.parametrize("value", ["foo", "gsm8k", "gsm8k:val", ":test", "=tests/fixtures/orcamath", "orcamath="])
def test_lengths_refuses_a_set_it_cannot_read_naming_the_forms_it_takes(value, capsys):
    """--sets foo ended in "ValueError: not enough values to unpack"; gsm8k:val read the test split."""
    import lengths

    err = _refused(lengths.parse_args, ["--sets", "gsm8k:train", value], capsys)
    assert (f"argument --sets: {value!r}: expected <dataset>:<split> (split: train or test, e.g. gsm8k:test) or "
            "<name>=<folder>") in err
    assert lengths.parse_args(["--sets", "gsm8k:test", "orcamath=tests/fixtures/orcamath"]).sets == [
        "gsm8k:test", "orcamath=tests/fixtures/orcamath"]


@pytest.mark.parametrize(("argv", "message"), [
    (["--dataset", "gsm8"], "argument --dataset: invalid choice: 'gsm8' (choose from 'gsm8k', "),
    (["--thresholds", "0.5", "2"], "argument --thresholds: '2': expected a number in (0, 1]"),
    (["--thresholds", "0"], "argument --thresholds: '0': expected a number in (0, 1]"),
    (["--examples", "-1"], "argument --examples: -1: expected a whole number of at least 0"),
])
def test_dedup_refuses_a_dataset_or_threshold_it_cannot_deduplicate(argv, message, capsys):
    import dedup

    assert message in _refused(dedup.parse_args, argv, capsys)


def test_eval_speed_prints_where_the_static_engines_time_went():
    from eval_speed import describe_phases

    from slm_sweep.evaluate.decode import LoopTimes

    times = LoopTimes(prefill_forwards=32, prefill_s=47.23, decode_steps=255, decode_s=16.03)
    assert describe_phases(times.as_dict()) == ("prompts read 47.2 s in 32 forwards, "
                                                "255 decode steps 16.0 s (62.9 ms each)")
    assert describe_phases(None) == ""  # the other engines keep no profile
