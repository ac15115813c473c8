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
