"""Tests for slm_sweep.evaluate.scoring.

Expected values follow lm-evaluation-harness's gsm8k task, metadata version 3.0
(lm_eval/tasks/gsm8k/gsm8k.yaml): the "strict-match" and "flexible-extract" filters run through
RegexFilter (lm_eval/filters/extraction.py: findall, then the match at group_select, then the first
non-empty group of a tuple match, then strip) and the exact_match metric
(exact_match_hf_evaluate in lm_eval/api/metrics.py) with ignore_case true, ignore_punctuation false
and regexes_to_ignore [",", "\\$", "(?s).*#### ", "\\.$"] applied in order to both sides.
Where lm-eval's filter yields "[invalid]" the module returns None.
"""

import ast
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from slm_sweep.evaluate import scoring
from slm_sweep.evaluate.scoring import (
    canonical_number,
    check_mode,
    extract_answer,
    is_correct,
    normalise,
    numbers_close,
    parse_number,
    reference_answer,
    select_match,
    truncate_at_stop,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

GSM8K_SOLUTION = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n"
    "#### 72"
)

# (model output, strict extraction, flexible extraction)
EXTRACTION_CASES = [
    pytest.param(GSM8K_SOLUTION, "72", "72", id="gsm8k-solution"),
    pytest.param(
        "#### 18\n\nQuestion: next one\n#### 20", "18", "20", id="several-markers-strict-first-flexible-last"
    ),
    pytest.param("#### 5.\n#### 6", "5", "6", id="marker-with-sentence-period"),
    pytest.param("The total is #### $1,234.", None, "1234", id="dollar-after-marker-breaks-strict"),
    pytest.param("#### 1,234.", "1234", "1234", id="commas-and-trailing-period"),
    pytest.param("#### 1,234.56", "1234.56", "1234.56", id="decimal-with-commas"),
    pytest.param("#### -5", "-5", "-5", id="negative-integer"),
    pytest.param("It falls to -12.5 degrees.\n#### -12.5", "-12.5", "-12.5", id="negative-decimal"),
    pytest.param("#### 0.25", "0.25", "0.25", id="decimal"),
    pytest.param("#### .5", ".5", ".5", id="decimal-without-leading-zero"),
    pytest.param("#### 72.0", "72.0", "72.0", id="trailing-zero-kept"),
    pytest.param("The answer is 18.", None, "18", id="prose-answer-with-period"),
    pytest.param("The answer is 1,000,000.", None, "1000000", id="prose-answer-with-commas"),
    pytest.param("She pays $18 for 3 kg.", None, "3", id="flexible-takes-last-number-even-a-unit-count"),
    pytest.param("The rope is 12.5m long.", None, "12.5", id="number-followed-by-unit"),
    pytest.param("Total: 3.50 dollars", None, "3.50", id="trailing-zero-decimal-kept"),
    pytest.param("There is no number here.", None, None, id="no-number"),
    pytest.param("", None, None, id="empty"),
    pytest.param("#### 72\n\n  ", "72", "72", id="trailing-whitespace"),
    pytest.param("She sold <<48/2=24>>24 clips", None, "24", id="annotation-then-result"),
    pytest.param("so in all <<48+24=72>>", None, "72", id="annotation-last"),
    pytest.param("####72", None, "72", id="marker-without-space"),
    pytest.param("####  72", None, "72", id="marker-with-two-spaces"),
    pytest.param("#### The answer is 5", None, "5", id="marker-followed-by-words"),
    pytest.param("Wait... so it's 5 cookies", None, "5", id="ellipsis-before-number"),
    pytest.param("I think 5... or maybe not...", None, None, id="ellipsis-is-last-match"),
    pytest.param("#### ...\n#### 7", None, "7", id="strict-first-match-has-no-digit"),
    pytest.param("a - b", None, None, id="lone-minus"),
    pytest.param("Between 3-5 hours", None, "-5", id="range-reads-as-negative"),
]


@pytest.mark.parametrize(("text", "strict", "flexible"), EXTRACTION_CASES)
def test_extract_answer_strict(text, strict, flexible):
    assert extract_answer(text, "strict") == strict


@pytest.mark.parametrize(("text", "strict", "flexible"), EXTRACTION_CASES)
def test_extract_answer_flexible(text, strict, flexible):
    assert extract_answer(text, "flexible") == flexible


@pytest.mark.parametrize("mode", ["exact", "", "Strict", None])
def test_bad_mode_raises_naming_it(mode):
    with pytest.raises(ValueError, match=rf"mode {re.escape(repr(mode))}.*strict.*flexible"):
        extract_answer("#### 1", mode)
    with pytest.raises(ValueError, match="strict"):
        is_correct("#### 1", "1", mode)
    with pytest.raises(ValueError, match="flexible"):
        check_mode(mode)


@pytest.mark.parametrize("mode", ["strict", "flexible"])
def test_check_mode_accepts_known_modes(mode):
    check_mode(mode)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1,234", "1234"),
        ("$5", "5"),
        ("72.", "72"),
        ("72.\n", "72\n"),  # "$" also matches before a final newline
        ("5..", "5."),  # the trailing-period rule runs once
        ("Some work\n#### 18", "18"),
        ("a #### b #### 9", "9"),  # the greedy prefix rule leaves what follows the last marker
        ("ABC", "abc"),
        (" 7 ", " 7 "),  # nothing is stripped
    ],
)
def test_normalise(text, expected):
    assert normalise(text) == expected


@pytest.mark.parametrize(
    ("matches", "group_select", "expected"),
    [
        ([], 0, None),
        (["12", "13"], 0, "12"),
        (["12", "13"], -1, "13"),
        ([("18.", ""), ("", "3")], -1, "3"),
        ([("18.", ""), ("", "3")], 0, "18."),
        ([("", "")], 0, None),
        ([(" 4 ", "5")], 0, "4"),
    ],
)
def test_select_match(matches, group_select, expected):
    assert select_match(matches, group_select) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("72", 72.0),
        ("-12.5", -12.5),
        (".25", 0.25),
        ("5.", 5.0),
        ("0.50", 0.5),
        ("..", None),
        ("1.2.3", None),
        ("", None),
        ("nan", None),
        ("inf", None),
        ("1e5", None),
        ("5 apples", None),
    ],
)
def test_parse_number(text, expected):
    assert parse_number(text) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (7, "7"),
        (-3, "-3"),
        (43.0, "43"),
        (-2.0, "-2"),
        (-0.0, "0"),
        (12.5, "12.5"),
        (1e-7, "0.0000001"),
        (1e20, "100000000000000000000"),
        (math.nan, None),
        (math.inf, None),
    ],
)
def test_canonical_number(value, expected):
    assert canonical_number(value) == expected


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        pytest.param(GSM8K_SOLUTION, "72", id="gsm8k-solution"),
        pytest.param("He pays 1000+234 = <<1000+234=1234>>1234\n#### 1,234", "1234", id="gsm8k-with-commas"),
        pytest.param("a #### b #### 10", "10", id="last-marker"),
        pytest.param("#### 72 ", "72", id="marker-trailing-space"),
        pytest.param("#### ", None, id="empty-after-marker"),
        pytest.param("1,234", "1234", id="bare-commas"),
        pytest.param("$5", "5", id="bare-dollar"),
        pytest.param("72.", "72", id="bare-trailing-period"),
        pytest.param("-3", "-3", id="bare-negative"),
        pytest.param("0.50", "0.50", id="bare-decimal-kept-as-written"),
        pytest.param("43.0", "43.0", id="bare-string-float-kept-as-written"),
        pytest.param(" 18\n", "18", id="bare-with-whitespace"),
        pytest.param("$1,234.", "1234", id="bare-dollars-commas-period"),
        pytest.param("1.2.3", "1.2.3", id="bare-non-number-kept-as-lm-eval-would"),
        pytest.param("First she buys 3 bags, so she has 12.5 apples left.", "12.5", id="orcamath-prose"),
        pytest.param("The answer is $1,250.", "1250", id="prose-dollars-commas"),
        pytest.param("The balance is -4 dollars", "-4", id="prose-negative"),
        pytest.param("It takes 3-5 days, so 5 days at most.", "5", id="prose-range"),
        pytest.param("No numbers at all.", None, id="prose-without-number"),
        pytest.param("", None, id="empty"),
        pytest.param(43.0, "43", id="float-integral"),
        pytest.param(12.5, "12.5", id="float"),
        pytest.param(7, "7", id="int"),
        pytest.param(math.nan, None, id="nan"),
    ],
)
def test_reference_answer(answer, expected):
    assert reference_answer(answer) == expected


@pytest.mark.parametrize("answer", [True, None, [1]])
def test_reference_answer_rejects_other_types(answer):
    with pytest.raises(TypeError):
        reference_answer(answer)


@pytest.mark.parametrize(
    ("text", "reference", "mode", "tolerance", "expected"),
    [
        pytest.param("#### 72", GSM8K_SOLUTION, "strict", None, True, id="gsm8k-exact"),
        pytest.param("#### 72.0", "72", "strict", None, False, id="exact-keeps-trailing-zero"),
        pytest.param("#### 72.0", "72", "strict", 1e-6, True, id="tolerance-ignores-trailing-zero"),
        pytest.param("The answer is 18.", "#### 18", "strict", None, False, id="prose-fails-strict"),
        pytest.param("The answer is 18.", "#### 18", "flexible", None, True, id="prose-passes-flexible"),
        pytest.param("#### 18", "#### 18", "flexible", None, True, id="marker-passes-flexible"),
        pytest.param("#### $1,234.", "#### 1,234", "strict", None, False, id="dollar-fails-strict"),
        pytest.param("#### $1,234.", "#### 1,234", "flexible", None, True, id="dollar-passes-flexible"),
        pytest.param("#### 43", 43.0, "strict", None, True, id="float-reference-exact"),
        pytest.param("#### 43", 43.0, "strict", 0.0, True, id="float-reference-zero-tolerance"),
        pytest.param("#### .25", 0.25, "strict", None, False, id="leading-zero-matters-exactly"),
        pytest.param("#### .25", 0.25, "strict", 1e-9, True, id="leading-zero-ignored-with-tolerance"),
        pytest.param("#### 1,000", 1000, "strict", None, True, id="commas-vs-int"),
        pytest.param("#### 1,000", "1,000", "strict", None, True, id="commas-both-sides"),
        pytest.param("#### 101", 100, "strict", 0.01, True, id="relative-tolerance-inside"),
        pytest.param("#### 102", 100, "strict", 0.01, False, id="relative-tolerance-outside"),
        pytest.param("#### 0.55", 0.5, "strict", 0.1, True, id="absolute-floor-below-one"),
        pytest.param("#### 0.75", 0.5, "strict", 0.1, False, id="absolute-floor-outside"),
        pytest.param("#### -5", -5, "strict", None, True, id="negative"),
        pytest.param("#### 5", -5, "strict", 0.5, False, id="sign-matters"),
        pytest.param(
            "#### 12.5", "so she has 12.5 apples left.", "strict", None, True, id="orcamath-reference"
        ),
        pytest.param("No idea.", "#### 4", "flexible", None, False, id="no-number-exact"),
        pytest.param("No idea.", "#### 4", "flexible", 0.1, False, id="no-number-tolerance"),
        pytest.param("I think 5... or maybe not...", "5", "flexible", None, False, id="ellipsis-last"),
        pytest.param("#### 1.2.3", "1.2.3", "strict", None, True, id="non-numeric-exact-match"),
        pytest.param("#### 1.2.3", "1.2.3", "strict", 0.1, False, id="non-numeric-with-tolerance"),
        pytest.param("#### 4", "No numbers.", "strict", None, False, id="reference-without-number"),
    ],
)
def test_is_correct(text, reference, mode, tolerance, expected):
    assert is_correct(text, reference, mode, tolerance) is expected


@pytest.mark.parametrize("tolerance", [-0.1, math.nan, math.inf])
def test_is_correct_rejects_bad_tolerance(tolerance):
    with pytest.raises(ValueError, match="tolerance"):
        is_correct("#### 1", "1", "strict", tolerance)


@pytest.mark.parametrize(
    ("prediction", "reference", "tolerance", "expected"),
    [
        ("43", "43", 0.0, True),
        ("0.25", ".25", 0.0, True),
        ("1000", "1001", 1e-3, True),
        ("1000", "1002", 1e-3, False),
        ("..", "1", 1.0, False),
        ("1", "abc", 1.0, False),
    ],
)
def test_numbers_close(prediction, reference, tolerance, expected):
    assert numbers_close(prediction, reference, tolerance) is expected


@pytest.mark.parametrize(
    ("text", "stop", "expected"),
    [
        ("12 apples\n\nQuestion: next", ["Question:", "\n\n"], "12 apples"),
        ("12 apples</s>Question:", ["Question:", "</s>", "<|im_end|>"], "12 apples"),
        ("no stop here", ["Question:"], "no stop here"),
        ("anything", [], "anything"),
        ("Question: at start", ["Question:"], ""),
        ("keeps all", ["", "zzz"], "keeps all"),
        ("a<|im_end|>b<|im_end|>", ["<|im_end|>"], "a"),
    ],
)
def test_truncate_at_stop(text, stop, expected):
    assert truncate_at_stop(text, stop) == expected


def test_import_pulls_in_no_ml_libraries():
    code = (
        "import sys, slm_sweep.evaluate.scoring\n"
        "print(sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_module_imports_only_the_standard_library():
    tree = ast.parse(Path(scoring.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0] if node.level == 0 else ".")
    assert imported <= set(sys.stdlib_module_names)
