"""Checked claims written out: claims.md (``render_claims_markdown``, which summary.md also holds below its
tables), claims.csv and claims.json (``write_claims``; ``claims_rows``, the CSV's rows, are also the W&B table's),
with the notes beside each verdict and roll-up.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from slm_sweep.scoring import METRICS, accuracy_key

from .claim_declaration import ABOVE, BELOW, NOT_ABOVE, NOT_BELOW, Claim
from .claims import (
    CONTRADICTED,
    INCONCLUSIVE,
    NOT_COVERED,
    REPRODUCED,
    ClaimResult,
    ClaimsReport,
    Instance,
    MetricReading,
    single_runs,
)
from .comparisons import POOLED_FROM, constituents
from .ordering import method_label, method_sort_key
from .stats import (
    HOLM,
    MCNEMAR,
    POOLED,
    SEED_TEST_DRAWS,
    SEED_TEST_SEED,
    SEEDS_AND_QUESTIONS,
    PairedTest,
    format_p,
)
from .tables import TRUNCATION_WARNING, markdown_table

CSV_COLUMNS = (
    "claim", "text", "claim_verdict", "complete", "direction", "metric", "margin", "dataset", "model_a", "method_a",
    "model_b", "method_b",
    "n_a", "mean_a", "wilson_low_a", "wilson_high_a", "n_b", "mean_b", "wilson_low_b", "wilson_high_b",
    "difference", "difference_ci_low", "difference_ci_high", "ci_level", "n_questions", "test", "p_value",
    "p_adjusted", "correction", "alpha", "verdict", "difference_ci_low_alone", "difference_ci_high_alone",
    "verdict_alone", "note", "metric_sensitive",
)  # fmt: skip


def margin_note(direction: str, test: PairedTest, verdict: str, margin: float) -> str | None:
    """For a non-inferiority verdict reproduced within the margin although the interval lies entirely on the
    other side of 0: A is significantly below B (above, for not_above), by less than the margin."""
    if verdict != REPRODUCED or direction not in (NOT_BELOW, NOT_ABOVE) or test.ci_low is None:
        return None
    if direction == NOT_BELOW and test.ci_high < 0:
        return f"within the {100 * margin:g}-point margin, yet below B (the interval lies below 0)"
    if direction == NOT_ABOVE and test.ci_low > 0:
        return f"within the {100 * margin:g}-point margin, yet above B (the interval lies above 0)"
    return None


def instance_margin_note(claim: Claim, instance: Instance) -> str | None:
    """The margin note of an instance's verdict in the family, else of its verdict alone (what the
    intersection-union roll-up reads), marked so."""
    family = margin_note(claim.direction, instance.test, instance.verdict, claim.margin)
    alone = margin_note(claim.direction, instance.test_alone or instance.test, instance.alone, claim.margin)
    return family or (alone and f"alone: {alone}")


def margin_roll_up(r: ClaimResult) -> str | None:
    """The roll-up's word on the instances reproduced within the margin whose interval lies on the other side of 0
    (in the family, or alone: an intersection-union roll-up reads those)."""
    beyond = [i for i in r.instances if instance_margin_note(r.claim, i)]
    if not beyond:
        return None
    side = "below" if r.claim.direction == NOT_BELOW else "above"
    return (f"{len(beyond)} of {len(r.instances)} instance{'s' if len(r.instances) != 1 else ''} within the "
            f"{100 * r.claim.margin:g}-point margin, yet significantly {side} B (the interval lies {side} 0, in the "
            "family or alone)")


def contradicted_alone_roll_up(r: ClaimResult) -> str | None:
    """The roll-up's word on the instances contradicted at alpha on their own but not in the family, where the
    claim is not contradicted: a family of many instances at a Bonferroni level (or Holm-adjusted p) on three
    seeds can hide a large difference against the claim, which only the "alone" column would otherwise show.
    Under ``--correction none`` an instance's verdict is its verdict alone, so there are none."""
    if r.verdict == CONTRADICTED:
        return None
    alone = [i for i in r.instances if i.alone == CONTRADICTED and i.verdict != CONTRADICTED]
    if not alone:
        return None
    return (f"{len(alone)} of {len(r.instances)} instance{'s' if len(r.instances) != 1 else ''} "
            f"{CONTRADICTED} at alpha on {'their' if len(alone) != 1 else 'its'} own (not in the family)")


# the roll-up's notes, by their key in claims.json: each a sentence under the claim's heading in claims.md
ROLL_UP_NOTES = {"margin_note": margin_roll_up, "contradicted_alone_note": contradicted_alone_roll_up}


def roll_up_notes(r: ClaimResult) -> dict[str, str | None]:
    """Each of ``ROLL_UP_NOTES`` of the claim, None where it has nothing to say."""
    return {key: note(r) for key, note in ROLL_UP_NOTES.items()}


def instance_note(claim: Claim, instance: Instance) -> str | None:
    """What a reader of one instance's verdict must know: the margin note, lost seeds, a row of few seeds."""
    notes = [instance_margin_note(claim, instance)]
    lost = [f"{row['method']} lost seeds ({row['not_completed']})" for row in (instance.a, instance.b)
            if row.get("not_completed")]
    lost += [f"{row['method']} kept seeds by a retry ({row['retried']})" for row in (instance.a, instance.b)
             if row.get("retried")]
    if instance.downgraded:
        shown = "the claim" if instance.tested_verdict == REPRODUCED else "the contradiction"
        lost.append(f"its completed seeds alone cannot show {shown}")
    notes += lost
    pooled = POOLED_FROM in instance.a
    if pooled:
        key = f"{accuracy_key(instance.metric)}_mean"
        notes.append("per model, A − B (pp): " + ", ".join(
            f"{a['model']} {_points(a.get(key), b.get(key))}"
            for a, b in zip(constituents(instance.a), constituents(instance.b))))
    for a, b in zip(constituents(instance.a), constituents(instance.b)):
        prefix = f"{a['model']} × " if pooled else ""
        notes += [f"{prefix}{method_label(row)}: one training run, so the spread between training seeds is not "
                  "measured (the test covers the questions only)" for row in single_runs(a, b)]
        if 2 in (a.get("n"), b.get("n")) and instance.test.test in (SEEDS_AND_QUESTIONS, POOLED):
            notes.append(f"{prefix.removesuffix(' × ')}{': ' if pooled else ''}a row of 2 seeds: the seeds test "
                         "rests on one degree of freedom for their spread and resolves little")
        notes += [prefix + note for note in learning_rate_notes(a, b)]
        notes += [f"{prefix}{method_label(row)}: {100 * row['truncated_fraction_mean']:.0f} % of its answers cut off "
                  "at the token limit" for row in (a, b)
                  if (row.get("truncated_fraction_mean") or 0) > TRUNCATION_WARNING]
    return "; ".join(dict.fromkeys(n for n in notes if n)) or None


def _points(a: float | None, b: float | None) -> str:
    return "–" if a is None or b is None else signed_points(a - b)


def zero_noise(value: float) -> float:
    """``value``, read as 0.0 within 1e-12 of 0: float noise (a difference of -2.2e-18 between two rows of equal
    means) neither prints as -0.0 nor reads as a sign."""
    return 0.0 if abs(value) < 1e-12 else value


def signed_points(value: float) -> str:
    """A difference of accuracies in points with its sign: ``+2.5``, ``+0.0`` for 0 and float noise."""
    return f"{100 * zero_noise(value):+.1f}"


def learning_rate_notes(*rows: dict[str, Any]) -> list[str]:
    """Why a trained side's rate may not be its best: not tuned, tuned at an end of its search, chosen on a lead
    within noise, or tied with another rate and chosen by what broke the tie. A method trained below its best
    rate is judged on less than it can do (and full fine-tuning at a rate too high is what "below zero-shot" can
    also mean)."""
    notes = []
    for row in rows:
        if not row.get("trained") or row.get("lr") is None:
            continue
        if row.get("lr_at_edge"):
            edge = "only rate" if row["lr_at_edge"] == "only" else row["lr_at_edge"]
            notes.append(f"{method_label(row)}: its tuned rate {row['lr']:g} is the {edge} its search compared, the "
                         "best may lie beyond")
        elif row.get("lr_source") and "tuned" not in row["lr_source"].split(","):
            notes.append(f"{method_label(row)}: rate {row['lr']:g} not tuned ({row['lr_source']})")
        if row.get("lr_tied"):
            notes.append(f"{method_label(row)}: its tuned rate {row['lr']:g} tied with "
                         f"{row.get('lr_within_noise') or 'the runner-up'} on validation; chosen by the "
                         f"{row['lr_tied']}")
        elif row.get("lr_within_noise"):
            notes.append(f"{method_label(row)}: its search did not separate the tuned rate {row['lr']:g} from "
                         f"{row['lr_within_noise']} (a lead within noise)")
    return notes


def metrics_text(r: ClaimResult) -> str:
    """The metric column of a claim: its own, else each dataset's ("flexible (gsm8k), lenient (orcamath)")."""
    if r.claim.metric is not None:
        return r.claim.metric
    by_dataset = dict.fromkeys((i.metric, i.dataset) for i in r.instances)
    return ", ".join(f"{metric} ({dataset})" for metric, dataset in by_dataset) or "each dataset's"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _side_cell(row: dict[str, Any], metric: str) -> str:
    key = accuracy_key(metric)
    mean, low, high = row.get(f"{key}_mean"), row.get(f"{key}_wilson_low"), row.get(f"{key}_wilson_high")
    seeds = f"{row['n']} seed{'s' if row['n'] != 1 else ''}"
    interval = f" [{_pct(low)}, {_pct(high)}]" if low is not None and high is not None else ""
    return f"{_pct(mean)}{interval} ({seeds})"


def _difference_cell(test: PairedTest) -> str:
    if test.difference is None:
        return "–"
    interval = f" [{signed_points(test.ci_low)}, {signed_points(test.ci_high)}]" if test.ci_low is not None else ""
    return f"{signed_points(test.difference)}{interval}"


def _test_cell(test: PairedTest) -> str:
    if test.test is None:
        return f"none ({test.reason})"
    detail = f"b={test.discordant[0]}, c={test.discordant[1]}" if test.discordant else \
        f"{test.seeds[0]} vs {test.seeds[1]} seeds{test.over()}"
    return f"{test.test} ({detail}, {test.n_questions} questions)"


def _counts_text(counts: Counter) -> str:
    return ", ".join(f"{counts[v]} {v}" for v in (REPRODUCED, CONTRADICTED, INCONCLUSIVE) if counts[v]) or "none"


def _wording_text(r: ClaimResult) -> str:
    """The claim's verdict against each wording of a side that lists them ("against zeroshot: reproduced")."""
    return "; ".join(f"{'against ' if side == 'b' else ''}{method}: {verdict}"
                     for side, method, verdict, _ in r.by_wording())


def _metrics_cell(r: ClaimResult) -> str:
    """The summary table's cell: the other metrics' verdicts where they differ, the metrics that agree."""
    differ = [f"on {metric}: {reading.verdict}" for metric, reading in r.by_metric.items()
              if reading.verdict != reading.on_claims_metric]
    same = [metric for metric, reading in r.by_metric.items() if reading.verdict == reading.on_claims_metric]
    return "; ".join([*differ, *(["same on " + ", ".join(same)] if same else [])]) or ("–" if r.instances else "")


def _reading_text(reading: MetricReading, total: int) -> str:
    skipped = (f"; {total - reading.skipped} of {total} instances, the other rows lack {reading.metric}"
               if reading.skipped else "")
    return f"on {reading.metric} {reading.verdict} ({_counts_text(reading.counts)}{skipped})"


def _level(interval_alpha: float) -> str:
    """The confidence level of an interval: 95%, 98.33%."""
    return f"{100 * (1 - interval_alpha):.4g}%"


# not tables.UNTESTED_MARK (†, "not tested"): summary.md holds the claims below its tables
HOLM_MARK = "‡"


def holm_beyond_interval(correction: str, claim: Claim, instance: Instance) -> bool:
    """Whether an above/below instance is significant in the family by its Holm-adjusted p while its Bonferroni
    interval (at 1 - alpha/m) holds 0: Holm's step-down test rejects more than the intervals exclude 0 (never the
    other way round), and claims.md marks such a row."""
    test = instance.test
    return (correction == HOLM and claim.direction in (ABOVE, BELOW)
            and instance.verdict in (REPRODUCED, CONTRADICTED) and test.ci_low is not None
            and test.ci_low <= 0 <= test.ci_high)


def _margin_rule(claim: Claim, correction: str) -> str:
    """How a non-inferiority verdict is read, and what its p is not."""
    if claim.direction == NOT_BELOW:
        bound = f"lies entirely above −{100 * claim.margin:g} pp, {CONTRADICTED} when entirely below it"
    else:
        bound = f"lies entirely below +{100 * claim.margin:g} pp, {CONTRADICTED} when entirely above it"
    return (f"The verdict is the interval's bound against the margin ({REPRODUCED} when the interval of A − B "
            f"{bound}); p tests no difference (A = B), not the margin, and decides nothing here"
            + (", so no Holm-adjusted p is shown." if correction == HOLM else "."))


def _provenance_text(report: ClaimsReport) -> str:
    """What the claims were checked on and with, for the header of claims.md; '' when nothing is known."""
    parts = []
    if report.dirs:
        parts.append("Results read from " + ", ".join(f"`{d}`" for d in report.dirs))
    if report.git_commit:
        parts.append(f"checked by the report code at commit `{report.git_commit}` (the commits that computed the "
                     "cells: report.json's `inputs.cell_commits`)")
    if report.claims_sha256:
        parts.append(f"claims file sha256 `{report.claims_sha256}`")
    if report.report_json:
        parts.append(f"`{report.report_json}` beside this file names every result file read, the library versions "
                     "and the settings")
    if not parts:
        return ""
    text = "; ".join(parts) + "."
    return text[0].upper() + text[1:]


def _correction_text(report: ClaimsReport) -> str:
    if report.correction == HOLM:
        return (f"The instances of a claim are one family: the p-values are Holm-adjusted over its m tested "
                f"instances (above/below verdicts use them) and the intervals are Bonferroni simultaneous intervals "
                f"at 1 − alpha/m (non-inferiority verdicts read them), so every verdict of a claim holds jointly at "
                f"alpha={report.alpha:g}; Holm's step-down test rejects more than these intervals exclude 0, and "
                f"a verdict it reaches beside a Bonferroni interval that holds 0 is marked {HOLM_MARK}. Roll-up: "
                f"{REPRODUCED} ({CONTRADICTED}) when every instance is, in the family or at alpha on its own "
                f"(\"alone\": the claim is the conjunction of its instances, as is \"every instance is against "
                f"it\", and every one significant at alpha rejects the union of their nulls at alpha, an "
                f"intersection-union test that needs no correction); the partial roll-ups read the family's "
                f"verdicts.")
    return (f"Each instance at alpha={report.alpha:g} on its own, no correction for the number of instances "
            f"(`--correction none`): an all-{REPRODUCED} or all-{CONTRADICTED} roll-up is still a valid test at "
            f"alpha (every instance must be significant), but single instances and partial roll-ups are not "
            f"corrected.")


def report_metrics(report: ClaimsReport) -> list[str]:
    """The registered metrics and every other one a claim was read on (from the result files)."""
    return list(dict.fromkeys([*METRICS, *(metric for r in report.results for metric in r.by_metric),
                               *(i.metric for r in report.results for i in r.instances)]))


def render_claims_markdown(report: ClaimsReport, level: int = 1) -> str:
    """The claims table: the rules, one roll-up line per claim, then each claim's instances."""
    h = "#" * level
    results = report.results
    lines = [
        f"{h} Claims",
        "",
        *([provenance, ""] if (provenance := _provenance_text(report)) else []),
        f"Claims from `{report.source}`. Each instance compares side A with side B on one dataset and model "
        f"(rows of summary.csv), on the metric the claim names (else the dataset's claims metric: lenient on "
        f"OrcaMath, whose prose answers the flexible extraction misreads, flexible elsewhere), over the test "
        f"questions both scored: "
        f"{MCNEMAR} when both rows are one seed, otherwise a {SEEDS_AND_QUESTIONS} (the questions' paired noise "
        f"and each side's spread over seeds as separate parts; {SEED_TEST_DRAWS} draws, seed {SEED_TEST_SEED}); "
        f"two-sided, alpha={report.alpha:g}. "
        f"above/below: {REPRODUCED} when the difference is significant in the claimed direction, {CONTRADICTED} "
        f"when significant against it, else {INCONCLUSIVE}. not_below/not_above: non-inferiority, from the "
        f"interval of A − B (when both rows are one seed, the hull of Tango's paired score interval and the "
        f"exact McNemar test's conditional interval, else that test's) against the claim's margin; their p "
        f"tests no difference (A = B), not the margin. Each interval excludes 0 exactly when its p is below its "
        f"level's alpha. Sides: mean accuracy (%) with the 95% Wilson interval over the test "
        f"questions. {_correction_text(report)} A side that lists a baseline's wordings (require: any) is checked "
        f"against each, and the claim needs them all: \"by wording\" gives the verdict against each alone. "
        f"\"On other metrics\": the claim read on each other metric the rows carry ({', '.join(report_metrics(report))}), by the "
        f"same tests and correction; the verdict stays the claims metric's, and a verdict that differs on another "
        f"metric (flexible scores answers such as \"$\\boxed{{18}}$\" or \"$18.00\" wrong) hinges on how answers "
        f"are extracted."
        + (" A claim pooled over models (pool: models) has one instance per dataset and pair of methods: A − B is "
           "the mean over its models of each model's difference, every model weighted equally, tested by the "
           f"{POOLED} (the questions' paired noise of the averaged difference, each model's seed spread apart); it "
           "is about these models, not models in general, and its note gives each model's difference."
           if any(r.claim.pool for r in results) else ""),
        "",
    ]
    body = []
    for r in results:
        sides = "; ".join(f"{a} vs {b}: {_counts_text(c)}" for a, b, c in r.by_sides()) or (r.reason or "")
        body.append((f"`{r.claim.id}`", r.claim.text, metrics_text(r), f"**{r.stated_verdict}**",
                     _wording_text(r) or "–", str(len(r.instances)), sides, _metrics_cell(r)))
    lines += markdown_table(("claim", "text", "metric", "verdict", "by wording", "instances", "by sides",
                             "on other metrics"), body)
    lines.append("")
    for r in results:
        if not r.instances:
            continue
        margin_claim = r.claim.direction in (NOT_BELOW, NOT_ABOVE)
        family = ""
        if report.correction == HOLM:
            family = (f" Family of {r.tested} tested instance{'s' if r.tested != 1 else ''}: "
                      + (f"{_level(r.interval_alpha)} Bonferroni simultaneous intervals (at 1 − alpha/m), which "
                         "the verdicts read." if margin_claim else
                         f"verdicts from Holm-adjusted p, {_level(r.interval_alpha)} Bonferroni simultaneous "
                         "intervals (at 1 − alpha/m)."))
        if margin_claim:
            family += " " + _margin_rule(r.claim, report.correction)
        if r.intersection_union == REPRODUCED:
            family += (f" Every instance is {REPRODUCED} at alpha={report.alpha:g} on its own, so the claim, their "
                       "conjunction, is (an intersection-union test); read one by one, the family's verdicts hold "
                       "jointly.")
        elif r.intersection_union == CONTRADICTED:
            family += (f" Every instance is {CONTRADICTED} at alpha={report.alpha:g} on its own, so the claim is "
                       f"{CONTRADICTED}: that every instance is against it is a conjunction too (an "
                       "intersection-union test, which went against the claim); read one by one, the family's "
                       "verdicts hold jointly.")
        for note in roll_up_notes(r).values():
            family += f" {note[0].upper()}{note[1:]}." if note else ""
        wording = f" By wording: {_wording_text(r)}." if r.by_wording() else ""
        readings = ", ".join(_reading_text(reading, len(r.instances)) for reading in r.by_metric.values())
        if readings:
            readings = (f" Metric-sensitive: {readings}, where the claims metric reads {r.verdict}." if
                        r.metric_sensitive else f" The same on other metrics: {readings}.")
        lines += [f"{h}# `{r.claim.id}`: {r.claim.text}", "", f"{r.claim.describe()}. Verdict: "
                  f"**{r.stated_verdict}** ({_counts_text(r.counts)}).{family}{wording}{readings}", ""]
        body, any_marked = [], False
        for i in r.instances:
            model = i.a["model"] if i.a["model"] == i.b["model"] else f"{i.a['model']} / {i.b['model']}"
            marked = holm_beyond_interval(report.correction, r.claim, i)
            family_cells = ((i.alone, _difference_cell(i.test) + (HOLM_MARK if marked else ""),
                             "–" if margin_claim else format_p(i.p_adjusted, report.alpha))
                            if report.correction == HOLM else ())
            any_marked = any_marked or marked
            note = instance_note(r.claim, i)
            others = "; ".join(f"{metric}: {verdict}" for metric, verdict in r.verdicts_by_metric(i).items()
                               if metric != i.metric)  # its own metric's is its verdict, but for the family
            body.append((i.dataset, i.metric, model, method_label(i.a), _side_cell(i.a, i.metric), method_label(i.b),
                         _side_cell(i.b, i.metric), _difference_cell(i.test_alone or i.test),
                         _test_cell(i.test), format_p(i.test.p_value, report.alpha), *family_cells,
                         f"**{i.verdict}**" + (f" ({note})" if note else ""), others or "–"))
        holm_columns = (("alone", f"A − B [{_level(r.interval_alpha)} Bonferroni CI]", "p (Holm)")
                        if report.correction == HOLM else ())
        lines += markdown_table(("dataset", "metric", "model", "A", "A (%)", "B", "B (%)",
                         f"A − B (pp) [{_level(report.alpha)} CI]", "test", "p (A = B)" if margin_claim else "p",
                         *holm_columns, "verdict" + (" (family)" if report.correction == HOLM else ""),
                         "on other metrics"), body)
        if any_marked:
            lines += ["", f"{HOLM_MARK} Holm's step-down test rejects, while the {_level(r.interval_alpha)} "
                          "Bonferroni interval still holds 0: the interval tests every instance at alpha/m, Holm's "
                          "test only the smallest p (the next at alpha/(m − 1), and so on), so the interval is the "
                          "more conservative of the two; both hold the family-wise error at "
                          f"alpha={report.alpha:g}, and the verdict is Holm's."]
        if r.absent or r.absent_models:
            named = [*sorted(set(r.absent), key=method_sort_key), *(f"model {m}" for m in r.absent_models)]
            lines += ["", f"Not in these results: {', '.join(named)}."]
        if r.gaps:
            lines += ["", "Incomplete: the claim covers more than these instances could use, so its verdict rests on "
                          "part of it:", "", *(f"- {gap}" for gap in r.gaps)]
        if r.excluded:
            lines += ["", "Left out by the claim's rules:", "", *(f"- {line}" for line in r.excluded)]
        lines.append("")
    uncovered = [r for r in results if not r.instances]
    if uncovered:
        lines += [f"{h}# Not covered", "", "The results hold no pair of cells these claims need:", ""]
        lines += [f"- `{r.claim.id}` ({r.claim.text}): {r.reason}"
                  + (f" ({'; '.join(r.gaps)})" if r.gaps else "") for r in uncovered]
        lines.append("")
    return "\n".join(lines)


def _flat_rows(r: ClaimResult, alpha: float, correction: str) -> list[dict[str, Any]]:
    """One flat row per instance of a claim, or one saying it is not covered."""
    claim = r.claim
    common = {"claim": claim.id, "text": claim.text, "claim_verdict": r.verdict, "complete": not r.gaps,
              "direction": claim.direction, "metric": metrics_text(r),
              "margin": claim.margin if claim.direction in (NOT_BELOW, NOT_ABOVE) else None, "alpha": alpha,
              "correction": correction, "metric_sensitive": r.metric_sensitive if r.instances else None}
    if not r.instances:
        return [{**common, "verdict": NOT_COVERED, "note": r.reason}]
    out = []
    for i in r.instances:
        key = accuracy_key(i.metric)
        out.append({
            **common, "metric": i.metric, "dataset": i.dataset, "model_a": i.a["model"], "method_a": method_label(i.a),
            "model_b": i.b["model"], "method_b": method_label(i.b), "n_a": i.a["n"], "n_b": i.b["n"],
            **{f"{stat}_{side}": row.get(f"{key}_{stat}") for side, row in (("a", i.a), ("b", i.b))
               for stat in ("mean", "wilson_low", "wilson_high")},
            "difference": zero_noise(i.test.difference) if i.test.difference is not None else None,
            "difference_ci_low": i.test.ci_low,
            "difference_ci_high": i.test.ci_high,
            "ci_level": round(1 - r.interval_alpha, 6) if i.test.ci_low is not None else None,
            "n_questions": i.test.n_questions or None, "test": i.test.test, "p_value": i.test.p_value,
            # a margin claim's verdict reads its interval: an adjusted p of "no difference" decides nothing there
            "p_adjusted": None if claim.direction in (NOT_BELOW, NOT_ABOVE) else i.p_adjusted,
            "verdict": i.verdict, "verdict_alone": i.alone,
            "difference_ci_low_alone": (i.test_alone or i.test).ci_low,
            "difference_ci_high_alone": (i.test_alone or i.test).ci_high,
            "note": i.test.reason or instance_note(claim, i),
            **{f"verdict_{metric}": verdict for metric, verdict in r.verdicts_by_metric(i).items()},
        })  # fmt: skip
    return out


def claims_rows(report: ClaimsReport) -> list[dict[str, Any]]:
    """One flat row per instance, and one per claim not covered (the CSV's rows)."""
    return [row for r in report.results for row in _flat_rows(r, report.alpha, report.correction)]


def claims_json(report: ClaimsReport) -> dict[str, Any]:
    claims = []
    for r in report.results:
        claims.append({
            "id": r.claim.id, "text": r.claim.text, "a": list(r.claim.a.methods), "b": list(r.claim.b.methods),
            "description": r.claim.describe(), "direction": r.claim.direction, "metric": metrics_text(r),
            "margin": r.claim.margin, "pool": r.claim.pool, "verdict": r.verdict, "by_intersection_union": r.by_intersection_union,
            "intersection_union": r.intersection_union,
            "complete": not r.gaps, "gaps": r.gaps, **roll_up_notes(r),
            "excluded": r.excluded,
            "counts": dict(r.counts),
            "by_sides": [{"a": a, "b": b, "counts": dict(c)} for a, b, c in r.by_sides()],
            "by_wording": [{"side": side, "method": method, "verdict": verdict, "counts": dict(c)}
                           for side, method, verdict, c in r.by_wording()],
            "metric_sensitive": r.metric_sensitive if r.instances else None,
            "by_metric": {metric: {"verdict": reading.verdict, "counts": dict(reading.counts),
                                   "by_intersection_union": reading.by_intersection_union,
                                   "intersection_union": reading.intersection_union,
                                   "instances": len(reading.instances), "skipped": reading.skipped}
                          for metric, reading in r.by_metric.items()},
            "not_in_results": r.absent, "models_not_in_results": r.absent_models, "not_covered": r.reason if not r.instances else None,
            "tested_instances": r.tested, "interval_level": round(1 - r.interval_alpha, 6),
            "instances": _flat_rows(r, report.alpha, report.correction) if r.instances else [],
        })  # fmt: skip
    return {"source": report.source, "claims_sha256": report.claims_sha256, "sweep_dirs": report.dirs,
            "git_commit": report.git_commit, "report_json": report.report_json,
            "alpha": report.alpha, "correction": report.correction,
            "tests": {"single seeds": MCNEMAR, "several seeds": SEEDS_AND_QUESTIONS, "pooled over models": POOLED,
                      "seed_test_draws": SEED_TEST_DRAWS, "seed_test_seed": SEED_TEST_SEED},
            "claims": claims}


def write_claims(report: ClaimsReport, out_dir: str | os.PathLike) -> dict[str, Path]:
    """claims.md, claims.csv and claims.json in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"claims_md": out / "claims.md", "claims_csv": out / "claims.csv", "claims_json": out / "claims.json"}
    paths["claims_md"].write_text(render_claims_markdown(report) + "\n", encoding="utf-8")
    columns = (*CSV_COLUMNS, *(f"verdict_{metric}" for metric in report_metrics(report)))
    with paths["claims_csv"].open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in claims_rows(report):
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    paths["claims_json"].write_text(json.dumps(claims_json(report), indent=2) + "\n", encoding="utf-8")
    return paths
