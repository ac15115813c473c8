"""Answer extraction and scoring for math word problems.

Every score is one metric in ``METRICS``: a name, an extractor whose result is recorded per prediction as
``extracted_<name>``, and a check ``(output_text, reference, tolerance) -> bool`` recorded as
``correct_<name>``; a set's mean is ``accuracy_<name>``.

``strict`` and ``flexible`` follow lm-evaluation-harness's ``gsm8k`` task (``lm_eval/tasks/gsm8k/gsm8k.yaml``,
metadata version 3.0) together with ``RegexFilter`` (``lm_eval/filters/extraction.py``) and the
``exact_match`` metric (``exact_match_hf_evaluate`` in ``lm_eval/api/metrics.py``):

* ``strict``: ``#### (\\-?[0-9\\.\\,]+)`` searched with ``findall``; the first match is kept.
* ``flexible``: ``(-?[$0-9.,]{2,})|(-?[0-9]+)``; the last match is kept, and because the pattern
  has two groups the first non-empty group of that match is used.
* Both the extracted prediction and the reference are normalised the same way: the regexes
  ``,``, ``\\$``, ``(?s).*#### `` and ``\\.$`` are deleted in that order, then the text is
  lower-cased (``ignore_case: true``, ``ignore_punctuation: false``); no whitespace is stripped.

Where lm-eval would fall back to ``"[invalid]"`` this module returns ``None``. An extraction
without any digit (``"..."``, ``","``) is also reported as ``None``: lm-eval keeps such strings,
but they can never equal a reference, so the score is the same.

``lenient`` is the same for every method and reads the answer wherever a chat model states it: from the last
``\\boxed{...}``, else the rest of the sentence after the last ``####`` or, failing that, the last "the answer
is" (any case) or line that starts "Answer:" / "Final Answer:" (any case, in bold or a markdown heading:
"**Final Answer:** 14") with a number next on it, else the last sentence that holds a number once closing remarks
are cut off (a last paragraph starting "Note", a last paragraph or sentence checking a value already written, a
last sentence labelled so with a colon, "Note: ..." or "Check: ...", a parenthesised remark at the end), read as a
prose reference's final sentence is (``prose_reference_value``), so that a reference solution states its own
answer ("So, 15 apples are left after 3 days." is 15; "... is 45, since 45 - 15 = 30" is 45), or its last
number where that reading gives no one value; a second result after ", and" / ";" makes it none only as scoring
version 19 read it (``_main_clause``: "So, Yoongi has 8 marbles, and he gave 4 away." is 8); in a sentence that holds an ordinal, also where no verb or "=" states
the value read ("After moving ahead 1 spot, she finished in 6th place." is 6, as a model's ordinal may answer;
"There were 360 people on the 2nd day." is 360). A check that arrives
at a value written nowhere before it works the answer out and is kept ("Let's check how many apples remain: 12 -
5 = 7"; so is one that converts the answer, "45/60 = 0.75 hours" after "Total = 45 minutes", which is then read). Where the part read holds an "=", the result after the last one counts ("the answer is 16 - 3 - 4 = 9
eggs" is 9). An explicit marker therefore wins over numbers written after it ("The answer is 12. Wait, she has
14." is 12), and a closing "(Note: 1 dozen = 12)" is never the answer, and a ``####`` answer wins over a later
"the answer is". A marker's answer that offers several values of one kind ("12 or 13", "between 12 and 20",
"\\boxed{12, 13}", "12 to 15 apples", "12 - 3") is no answer; "between" / "either" makes a range only where it
introduces the two numbers ("6 handshakes between the 4 friends" is 6). One value restated in another unit ("45
minutes or 0.75 hours") is its first; so is a percent beside a plain number of the same value ("25% or 0.25",
"0.25 or 25%", "1/2 or 50%"), while one of another value offers two ("12% or 13"). A sign set apart from its
number on the marker's line ("#### - 5") or in ``\\boxed{- 5}`` is kept. Numbers may carry thousands
separators, a currency sign, a percent sign (dropped: "25%" is 25), a sign and decimals, an exponent ("2.5e-05",
"1.5 \\times 10^{6}", "3 × 10^4", "1.2 x 10^3"), or be a power of ten alone ("10^6" is 1000000, never 10),
fractions ``3/4``, ``\\frac{3}{4}`` / ``\\dfrac{3}{4}`` / ``\\frac34`` (LaTeX's one-digit arguments) or mixed
numbers ``1 1/2`` / ``1\\frac{1}{2}``. A comma right after a number ends it ("$1,500, in total" is 1500).
``extracted_lenient`` records the value compared as a plain decimal (``_decimal_text``): exactly for an integer or
a finite decimal, however long, and a fraction whose digits recur to RECURRING_DIGITS significant digits after
its whole part (1/3 is "0.33333333333333333").

After "the answer is", "Answer:" or ``####`` the answer ends where a justification starts ("4 because 4 x 3 = 12"
is 4, "5 (since 5 * 2 = 10)" is 5), and a restatement ("16 - 3 - 4, which is 9") is the answer, unless what it
restates is one number already ("18, which is 9 * 2" is 18). A ``####`` counts only with a number after it,
which may be set in markdown emphasis or code or follow an escaped dollar ("#### **$18**", "#### \\$18"); a
markdown heading is no marker ("#### Step 2", "#### 2. Income": a number, ".", ")" or ":" and a title that ends
no sentence). LaTeX thousands
separators ("1{,}000") and rupees ("Rs.40") are read as numbers, and an amount in dollars and cents as one
("18 dollars and 50 cents" and "$18 and 50 cents" are 18.50).

Numbers are compared by ``same_number``: equal up to float noise (a relative 1e-15, a few units in the last place
of a double, or the dataset's ``answer_tolerance`` when that is larger), or the reference rounded to the two or
more decimals the prediction is written with, keeping two or more significant digits ("0.67" for 2/3, "5.33"
for 5.3333333333; not "0.00002" for 0.000024967, nor "0.00" for any non-zero reference), or, for a reference
itself rounded to four or more decimals (3.33333), the prediction rounded to them (10/3). A relative tolerance of
1e-4 would accept -9867000 for -9867630 on GSM-Hard, whose slips are in the low digits; 1e-9 accepted 109844510300
for 109844510400.

Prose references (OrcaMath) are read by ``prose_reference_value``; see its docstring. A prose reference that
states its value as a rounding ("approximately $15.30", "\\approx 2.67", "... (rounded to two decimal places)")
is stored with ROUNDED_MARK in front, at the decimals it is written with ("≈15.30"): the numeric comparisons then
accept an answer that rounds to it (15.3, 15.304, 46/3 for ≈15.33); lm-eval's exact match compares the number
as written; ``plain_reference`` gives the number alone.
"""

import bisect
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, localcontext
from fractions import Fraction

STRICT_PATTERN = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE_PATTERN = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
REGEXES_TO_IGNORE = (",", r"\$", r"(?s).*#### ", r"\.$")

_PATTERNS = {"strict": STRICT_PATTERN, "flexible": FLEXIBLE_PATTERN}
_GROUP_SELECT = {"strict": 0, "flexible": -1}

_PLAIN_NUMBER = re.compile(r"-?(?:\d+\.?\d*|\.\d+)")
# A reference made only of the characters the strict filter accepts (plus "$"), e.g. "$1,234.".
_BARE_ANSWER = re.compile(r"-?[$0-9.,]*\d[$0-9.,]*")
_DIGIT = re.compile(r"\d")

# relative: what float arithmetic leaves in a stated answer (GSM-Hard's 3244047.0999999996 for 3244047.1 is
# 1.2e-16 off; a few units in the last place of a double). 1e-9 accepted an answer 100 off a reference of 1.1e11.
FLOAT_NOISE = 1e-15
# A reference written with this many decimals or more is itself a rounding (MAWPS's 3.33333 for 10/3): an answer
# that rounds to it states it.
ROUNDED_REFERENCE_DECIMALS = 4
# A prose reference that states its value as a rounding ("approximately 15.33", "≈ 0.67", "... rounded to two
# decimal places") is stored with this mark in front; it is then compared as a rounding at any number of decimals.
ROUNDED_MARK = "≈"
# A lenient answer with no finite decimal form (1/3) is recorded to this many significant digits after its whole
# part: more than a double holds
RECURRING_DIGITS = 17
# Longer digit runs (degenerate generations) are no answer; they would also exceed int()'s digit limit.
_MAX_NUMBER_CHARS = 400

# One written number. A minus sign counts only when it does not follow a word character or a closing bracket
# (so "3-5" is a range, not 3 and -5); a digit right after a letter, "." or "^" is not a number ("m^2", "CO2").
_UNSIGNED = r"(?:\d{1,3}(?:,\d{3})+(?!\d|,\d)|\d+)(?:\.\d+)?|\.\d+"
# A power of ten after a plain number: "e-05", "E6", " \\times 10^{6}", "×10^4", "\\cdot 10^{-3}", "* 10^5",
# "x 10^3"
_EXPONENT = (r"(?:[eE](?P<e>[-+−]?\d{1,3})"
             r"|\s*(?:\\times|\\cdot|[×*x])\s*10\^(?:\{\s*(?P<pb>[-−]?\d{1,3})\s*\}|(?P<p>[-−]?\d{1,3})))"
             r"(?!\w|\.\d)")
# A power of ten written alone ("10^6", "10^{-3}"): its value, not the 10
_POWER_OF_TEN = r"(?P<ten>10)\^(?:\{\s*(?P<tb>[-−]?\d{1,3})\s*\}|(?P<t>[-−]?\d{1,3}))(?!\w|\.\d)"
_NUMBER = re.compile(
    rf"""
    (?P<sign>(?<![\w.)\]}}])[-−])?
    (?:[$€£¥₹]\s?)?
    (?:
        (?<![\w.^])(?P<lw>\d+)\s*(?P<lf>\\[dt]?frac\{{\s*(?P<ln>\d+)\s*\}}\{{\s*(?P<ld>\d+)\s*\}})
      | \\[dt]?frac\{{\s*(?P<fsign>[-−])?\s*(?P<fn>{_UNSIGNED})\s*\}}\{{\s*(?P<fd>{_UNSIGNED})\s*\}}
      | (?<![\w.^])(?<!\^\{{)(?P<mw>\d+)[ \t]+(?P<mn>\d+)/(?P<md>\d+)(?![\d/]|[.,]\d)
      | (?<![\w.^])(?<!\^\{{)(?P<n>{_UNSIGNED})/(?P<d>{_UNSIGNED})(?![\d/])
      | (?<![\w.^])(?<!\^\{{){_POWER_OF_TEN}
      | (?<![\w.^])(?<!\^\{{)(?P<x>{_UNSIGNED})(?:{_EXPONENT})?
    )
    """,
    re.VERBOSE,
)
# Written forms read as others before numbers are: LaTeX's thousands separators ("1{,}000", "1,\\!000",
# "1\\,000") as ",", rupees ("Rs.40", "Rs 40") as "₹", and a fraction without braces ("\\frac34", whose
# arguments are one digit each, as LaTeX reads them) as "\\frac{3}{4}".
_LATEX_THOUSANDS = re.compile(r"(?<=\d)(?:\{,\}|,\\!|\\,)(?=\d{3}(?!\d))")
_BRACELESS_FRAC = re.compile(r"(\\[dt]?frac)\s*(\d)\s*(\d)")
_RUPEES = re.compile(r"\bRs\.?\s?(?=\d)")
# an amount in dollars and cents ("18 dollars and 50 cents", "$18 and 5 cents"): one value, 18.50 and 18.05
# (not from inside a number: each start in a long run of digits would try the rest of it again)
_DOLLARS_AND_CENTS = re.compile(
    r"(?P<sign>\$\s?)?(?<!\d)(?<!\d,)(?P<dollars>\d{1,3}(?:,\d{3})+|\d+)(?(sign)(?:\s*dollars?)?|\s*dollars?)"
    r"\s+and\s+(?P<cents>\d{1,2})\s*(?:cents?\b|¢)", re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\s*\{")
# A value stated as a rounding: a word or sign right before it ("approximately $15.33", "\\approx 2.67", "~0.5"),
# or "rounded"/"rounding" in the sentence that states it or a remark after it, unless negated ("without rounding")
_APPROXIMATE = re.compile(
    r"(?:\b(?:approximately|about|around|roughly|nearly|almost|close to)\b|\bapprox\b\.?|≈|(?<![\w}])~|"
    r"\\approx|\\sim(?![a-z]))\s*(?=[-−]?\s?[$€£¥₹]?\s?\.?\d)", re.IGNORECASE)
_ROUNDED = re.compile(r"\b(?:(?P<negated>without|no|not|n't)\s+(?:any\s+)?)?round(?:ed|ing)\b", re.IGNORECASE)
_NEGATION = re.compile(r"\b(?:no|not|never|without|unnecessary|needless)\b|n't\b", re.IGNORECASE)
_NEGATION_REACH = 30  # characters either side of a rounding mention that a negation reaches
_PRECISION = re.compile(r"[\d.,]+\s*(?:decimal|place|digit|significant|dp\b)", re.IGNORECASE)
# what may stand between a marker ("the answer is", "Answer:", "####") and the answer: "The final answer
# is:\n\n**12**", "#### `18`"
_ANSWER_LEAD = " :\t\r\n*_`"
# GSM8K's "#### <answer>" marker: only where a number follows, in markdown emphasis or code or after an escaped
# dollar ("#### **$18**", "#### \\$18"); not a markdown heading ("#### Step 2: Money", "#### **2. Income**"). A
# numbered heading's title ends no sentence: "#### 18. That is 9 eggs at $2 each." is a marker.
_MARKUP = r"[*_`]*"
# Two runs of spaces never stand side by side in these patterns (only after markup, a sign or a "#" does a second
# run start): a long run (a degenerate output) would otherwise be split between them in every way, quadratic or
# worse in its length.
_SPACED_MARKUP = r"(?:[*_`]+[ \t]*)?"
_NUMBER_NEXT = rf"[ \t]*{_SPACED_MARKUP}(?:[-−][ \t]*)?\\?[$€£¥₹]?[ \t]?\.?\d"  # a number next on the line
_NUMBERED_HEADING = (rf"[ \t]*{_SPACED_MARKUP}\d+[.):][ \t]+{_MARKUP}[A-Za-z](?:[^\n]*[^\s.!?*_`])?"
                     rf"[ \t\r*_`]*(?:\n|\Z)")
_GSM8K_MARKER = re.compile(rf"####(?!{_NUMBERED_HEADING})(?=(?:[ \t]*:)?{_NUMBER_NEXT})")
# "the (final) answer is" (any case), or a line that starts "Answer:" / "Final Answer:" (any case, in bold or a
# markdown heading: "**Final Answer:** 14", "## Answer: $18") with a number next on it, as "####" needs, and no
# other number on that line (_after_answer_marker): a line "Answer:" over a worked solution ("**Answer:** Janet's
# ducks lay 16 eggs ...", "Answer: 48 / 2 = 24 clips in May. 48 + 24 = 72 clips.") marks no answer
_ANSWER_IS = re.compile(r"\bthe\s+(?:final\s+)?answer\s+is\b", re.IGNORECASE)
_ANSWER_LINE = re.compile(
    rf"^[ \t]*(?:#+[ \t]*)?{_SPACED_MARKUP}(?:final[ \t]+)?answer[ \t]*{_SPACED_MARKUP}:"
    rf"(?=(?:[ \t]*\\\()?{_NUMBER_NEXT})",
    re.IGNORECASE | re.MULTILINE)
# In a reference, only a line that is "####" and a number counts: "#### 2. Cost of pears" is a heading
_GSM8K_ANSWER_LINE = re.compile(
    r"^[ \t]*####(?:[ \t]*:)?[ \t]*(?P<answer>(?:[-−][ \t]*)?[$€£¥₹]?(?=[0-9.,]*\d)[0-9.,]+)[ \t\r]*$",
    re.MULTILINE)
# a full stop after these abbreviations ends no sentence ("Rs. 300 is the interest", "approx. 15")
_NOT_AN_END = "".join(rf"(?<!\b{word}\.)" for word in ("Rs", "No", "Mr", "Mrs", "Ms", "Dr", "vs", "approx"))
_SENTENCE_END = re.compile(rf"[.!?]{_NOT_AN_END}(?=\s|$)|\n")
_SENTENCE_SPLIT = re.compile(rf"(?<=[.!?]){_NOT_AN_END}\s+|\n+")
_PARAGRAPH_SPLIT = re.compile(r"\n\s*\n")
# A closing paragraph that remarks on the answer or checks it. A remark ("Note: ...", "Check: 3 * 5 = 15.
# Correct.", "### Verification", "Let's verify: ...", "We can check this: ...") is cut always; a confirmation
# ("Indeed, 16 + 18 + 20 = 54.") when an earlier paragraph has stated a result; a longer check ("Let's verify by
# dividing: ...", "We can double-check that ...", "Verifying the total, ...") only when the value it arrives at is
# written before it, since it may be where the answer is worked out ("Let's check how many apples remain: 12 - 5 =
# 7" after "3 * 4 = 12 apples" and "He gives away 5").
_NOTE_START = re.compile(
    r"\(?\s*[*#]*\s*(?:(?P<remark>note|check(?:ing)?|verification|sanity check"
    r"|to (?:check|verify|confirm|double[- ]check))\b"
    r"|(?P<check>(?:let(?:'s| us)|we can) (?:check|verify|double[- ]check|confirm)\b|verif(?:y|ying)\b"
    r"|double[- ]check(?:ing)?\b|this (?:can be|is) (?:verified|confirmed|checked)\b)"
    # "Indeed, 16 + 18 + 20 = 54." confirms; "Indeed, she has 12 left." states
    r"|(?P<confirmation>indeed\b(?=[^\n]*=)))", re.IGNORECASE)
_CHECK_COLON = re.compile(r"(?:\s+(?:this|that|it|our answer|the answer|the result|the solution|our work))?\s*:")
_STATES_RESULT = re.compile(r"=|\\boxed|\b(?:so|therefore|thus|hence|the answer is)\b", re.IGNORECASE)
# A closing remark in parentheses, "(Note: ...)" or any other; LaTeX's \( ... \) is not one.
_TRAILING_REMARK = re.compile(r"(?<!\\)\((?!\s*[=≈])[^()]*(?<!\\)\)[\s.]*$")  # "(= 12)" is a result, kept
# Narrowing a final sentence to its result, in this order, each only when a number follows it: a word that
# introduces the conclusion ("..., so she has 12.5 apples left."), a verb that states the value ("15% of 240
# is 36", "8 pencils cost $2"), then "=".
_CONCLUSION = re.compile(r"\b(?:so|therefore|thus|hence|which means|that means)\b", re.IGNORECASE)
_WORKED_OUT = re.compile(rf"{_CONCLUSION.pattern}|\brounds?(?:\s+(?:up|down|off))?\s+to\b", re.IGNORECASE)
_STATEMENT = re.compile(r"\b(?:is|are|was|were|be|equals?|costs?)\b", re.IGNORECASE)
# a statement verb followed by a number, at most one word between ("is 15", "is approximately 3.33", "are $20")
_VALUE_VERBS = r"is|are|was|were|equals?|costs?"
_NUMBER_STATEMENT = re.compile(rf"\b(?:{_VALUE_VERBS})\s+(?:[A-Za-z]+\s+)?[-−$€£¥₹]?\d", re.IGNORECASE)
# In the part of a final sentence that states the result: a comparison ("is 5 more than 10"), a number in words
# beside the digits ("Lisa has thirty-five marbles, 5 in each bag"; two to ten describe more often than they
# answer: "the two baskets hold 45 apples") or a weekday named as the result
_COMPARISON = re.compile(r"\bthan\b", re.IGNORECASE)
_NOT_NUMERIC = re.compile(
    r"\b(?:eleven|twelve|thirteen|fourteen|fifteen|sixteen|seventeen|eighteen|nineteen|twenty|thirty|forty|fifty"
    r"|sixty|seventy|eighty|ninety|hundred|thousand|million)\b"
    r"|\b(?:monday|tuesday|wednesday|thursday|friday|saturday|sunday)\b", re.IGNORECASE)
# A value that is no plain number: a multiple of pi, a root, or a multiple of a variable ("25π", "\\sqrt{50}", "4x")
_SYMBOLIC = re.compile(r"π|\\pi\b|√|\\sqrt\b|\d[xyzn]\b")
# a decimal whose digits go on ("0.333...", "3.33…")
_REPEATING = re.compile(r"(?<![\d.])(?P<number>\d+\.\d+)(?:\.\.\.|…)")
# the value right after a statement verb, at most one word between ("will be 12,100", "is ₹120", "are about 5")
_VALUE_AFTER_VERB = re.compile(rf"\b(?:{_VALUE_VERBS}|be)\s+(?:[A-Za-z]+\s+)?[-−]?[$€£¥₹]?\s?\.?\d",
                               re.IGNORECASE)
# In a reference, a position or a count of digits is no quantity ("15 is the 3rd smallest", "a 3-digit number");
# a model's "#### 6th" still answers "What place did she finish in?"
_ORDINAL = re.compile(r"(?<![\w.,])\d+(?:[.,]\d+)*(?:st|nd|rd|th\b|-digit)", re.IGNORECASE)
_PERCENT_AFTER = re.compile(r"\d\s*(?:%|percent\b)", re.IGNORECASE)
# A clause after the result that may comment on it (``_main_clause``), a relative clause among them ("there are 9
# numbers that are divisible by 11": its verb states no value of the main clause). Here and below, "(?<!\s)" lets a
# run of spaces start a match only where the run starts: a search would otherwise scan the rest of a long run from
# each of its characters.
_SIDE_CLAUSE = re.compile(r",?(?<!\s)\s+(?:which|when|whereas|while)\b|(?<!\s)\s+(?:that|who)\s+(?:is|are|was|were)\b"
                          r"|,\s+and\b|;", re.IGNORECASE)
# A relative clause ends the main clause only once a statement verb has come before it ("there are 9 numbers that
# are ..."; not "The 3 boys who were late missed 10 minutes", "In 5 years, John, who is now 15, will be 20")
_RELATIVE = re.compile(r"\s+(?:that|who)\b", re.IGNORECASE)
# A side clause that goes on to state the result ("..., which leaves her with 9 apples", "..., which means he has 9",
# "..., which produces x = 18") comments on no value before it
_RESULT_CLAUSE = re.compile(
    r",?\s*(?:which|that)\s+(?:means|leaves|left|gives|gave|results\s+in|produces|brings|makes|amounts\s+to"
    r"|adds\s+up\s+to|comes\s+to|totals)\b", re.IGNORECASE)
# In a reference, a clause that points back at the result comments on it: a pronoun standing for the value, as the
# clause's subject right before "is" / "was" / "are" / "were" / "equals" ("..., and that is the answer", "; it is
# divisible by 3", "..., and this is 2 more than Jimin", "..., and that's 5 more than Yuna") or after "of" ("...,
# and 20% of it is 16", "..., and 2 of them are red"); one that does not states another result, a possessive "its",
# a relative "that", a pronoun before a noun or a verb among them ("..., and its width is 8 cm", "..., and this year
# he is 13", "..., and these two numbers add up to 30", "..., and it takes 20 seconds to cross the pole", "...,
# and those who passed are 24").
_BACK_REFERENCE = re.compile(r"^\s*(?:and\s+)?(?:that|this|these|those|it)(?:'s\b|\s+(?:is|was|are|were|equals)\b)"
                             r"|\bof\s+(?:it|them|that|this|these|those)\b", re.IGNORECASE)
# In a reference, a side clause that checks the value the sentence states, working out another: "the number is 7,
# and indeed 7 x 3 = 21", "x is 5, and it satisfies the equation 2x + 3 = 13", "..., and we can check: 7 x 3 = 21".
# The answer is the value stated, but a model's output is read as before scoring version 21, as the check's result,
# so the reference is none (the row is left out) rather than one that the solution itself would not score as
# correct against.
_CHECK_CLAUSE = re.compile(
    r"\s*(?:and\s+)?(?:indeed\b|(?:(?:it|this|that)\s+)?satisf(?:ies|ying)\b"
    r"|(?:(?:we|you|one)\s+can\s+|let(?:'s|\s+us)\s+|to\s+)?(?:check|verify|confirm|double[- ]check)(?:ing)?\b)",
    re.IGNORECASE)
# A model's output is read as before scoring version 20: a clause after ", and" states a second result only with a
# statement verb before a number on both sides and no pronoun at all ("So, Yoongi has 8 marbles, and he gave 4
# away." states 8)
_ANY_PRONOUN = re.compile(r"\b(?:it|its|this|that|them|these|those)\b", re.IGNORECASE)
# The side clauses that may state a second result rather than comment on the first: ", and", ", while", "whereas"
# and ";" (a "while" without a comma may say when: "he reads 20 pages while riding the bus for 30 minutes")
_TWO_RESULTS = re.compile(r",\s*(?:and|while)\b|,?\s*whereas\b|;", re.IGNORECASE)
# After "the answer is" or "####": a restatement of the result ("16 - 3 - 4, which is 9") is the answer; else
# the answer ends where a justification starts ("4 because 4 x 3 = 12", "5 (since 5 * 2 = 10)", "3, as ...").
_RESTATED = re.compile(r",?(?<!\s)\s*\b(?:which|that)\s+(?:is|equals|gives|makes)\b", re.IGNORECASE)
_JUSTIFICATION = re.compile(r",\s|(?<!\s)\s*\((?!\s*[=≈])|(?<!\s)\s+(?:because|since|as|given|where)\b",
                            re.IGNORECASE)
# In a final sentence without a marker, fewer words start one: "..., since 45 - 15 = 30", "... because 150 / 35 =
# 4.29" (a comma alone may set off the unit or a restatement; ", as a result ..." and ", as calculated ..." lead
# into a result)
_FINAL_JUSTIFICATION = re.compile(r",\s*(?:because|since|as(?!\s+(?:well|a\s+result|calculated)\b)|given)\b"
                                  r"|(?<!\s)(?<!\band)(?<!\bbut)\s+(?:because|since)\b", re.IGNORECASE)
# where a comma sets off the next part of a sentence (``_before_justification``)
_COMMA_BREAK = re.compile(r",\s")
# A value a sentence states: right after a statement verb or an "=", or right before a statement verb, at most one
# word between ("were 360 people", "= 6 miles", "15 is", "15 apples are")
_STATED_BEFORE = re.compile(rf"(?:=|\b(?:{_VALUE_VERBS}|be)(?:\s+[A-Za-z]+)?)\s*[-−]?[$€£¥₹]?\s?$",
                            re.IGNORECASE)
_STATED_AFTER = re.compile(rf"\s*(?:%\s*)?(?:[A-Za-z]+\s+)?(?:{_VALUE_VERBS})\b", re.IGNORECASE)
# A subject that counts some of a group ("4 of the 10 numbers are equal to 2"): its count and the value after the
# verb are two readings
_PARTITIVE = re.compile(r"[-−]?\d+\s+(?:out\s+)?of\s+(?:the\s+|these\s+|those\s+)?\d", re.IGNORECASE)
# A marker's answer that offers several values of one kind: two values joined as alternatives or a range ("12 or
# 13", "12 to 15 apples", "between 12 and 20", "either 12 or 20", "12-15"), listed ("\\boxed{12, 13}") or left
# as an unevaluated expression ("12 - 3", "2 \\times 3"). Not a hedge: one value restated in another unit ("45
# minutes or 0.75 hours", "25% or 0.25", "0.25 or 25%"), or a second number that only explains the first ("18 - 9
# eggs at $2 each", "4 and 2 left over", "3:00 pm", "6 handshakes between the 4 friends").
# right before the first number, at most one word between ("between about 12 and 20")
_RANGE_WORD = re.compile(r"\b(?:either|between)\s+(?:[A-Za-z]+\s+)?$", re.IGNORECASE)
# (the words before "and" / "or" end in no space, so that the space before it is split no other way)
_RANGE_JOIN = re.compile(r"(?:[^\d]*?[^\d\s])??\s*\b(?:and|or)\s*", re.IGNORECASE)  # "12 and 20", "12 apples and 20"
_ALTERNATIVE = re.compile(r"(?P<unit>(?:[^\d]*?[^\d\s])??)\s*\b(?:or|to|through)\s*", re.IGNORECASE)
_PERCENT_UNITS = ("%", "percent")
_OPERATOR = re.compile(r"\s*(?:[,+*×÷±]|\bx\b|\\(?:times|cdot|div|pm))\s*")
_SPACED_MINUS = re.compile(r"\s+[-−]\s*|\s*[-−]\s+")
_UNIT_AFTER = re.compile(r"\s*([^\s,;.:!?)]*)")
# a sign set apart from its number right after a marker ("#### - 5", as GSM8K's reference lines allow)
_SPACED_SIGN = re.compile(r"^([-−])[ \t]+(?=[$€£¥₹]?\s?\.?\d)")


# ---------------------------------------------------------------------------------------------- lm-eval


def normalise(text: str) -> str:
    """lm-eval ``exact_match`` normalisation as configured by the gsm8k task."""
    for pattern in REGEXES_TO_IGNORE:
        text = re.sub(pattern, "", text)
    return text.lower()


def select_match(matches: list, group_select: int) -> str | None:
    """Pick one ``findall`` result the way lm-eval's RegexFilter does; None where it falls back."""
    if not matches:
        return None
    match = matches[group_select]
    if isinstance(match, tuple):
        non_empty = [group for group in match if group]
        if not non_empty:
            return None
        match = non_empty[0]
    return match.strip()


def parse_number(text: str) -> float | None:
    """The value of a normalised number string such as "-12.5", ".25" or "72"; None otherwise."""
    if _PLAIN_NUMBER.fullmatch(text) is None:
        return None
    return float(text)


def canonical_number(value: int | float) -> str | None:
    """A plain decimal string for a number: integers without ".0", no exponent; None for nan/inf."""
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return None
    if value.is_integer():
        return str(int(value))
    return format(Decimal(repr(value)), "f")


def truncate_at_stop(text: str, stop: list[str]) -> str:
    """Cut ``text`` at the earliest occurrence of any non-empty stop string."""
    positions = [text.find(marker) for marker in stop if marker]
    found = [position for position in positions if position >= 0]
    return text[: min(found)] if found else text


def _answer_or_none(raw: str | None) -> str | None:
    if raw is None:
        return None
    answer = normalise(raw)
    return answer if _DIGIT.search(answer) else None


def _lm_eval_extract(text: str, mode: str) -> str | None:
    matches = _PATTERNS[mode].findall(text)
    return _answer_or_none(select_match(matches, _GROUP_SELECT[mode]))


def _lm_eval_correct(text: str, reference: str | float | int, tolerance: float | None, mode: str) -> bool:
    """lm-eval's exact match of normalised strings ("72.0" != "72") with ``tolerance`` None; otherwise both
    sides compared as numbers with a relative tolerance."""
    prediction = _lm_eval_extract(text, mode)
    expected = reference_answer(reference)
    if prediction is None or expected is None:
        return False
    if tolerance is None:
        return prediction == plain_reference(expected)
    return numbers_close(prediction, expected, tolerance)


def strict_extract(text: str) -> str | None:
    return _lm_eval_extract(text, "strict")


def strict_correct(text: str, reference: str | float | int, tolerance: float | None) -> bool:
    return _lm_eval_correct(text, reference, tolerance, "strict")


def flexible_extract(text: str) -> str | None:
    return _lm_eval_extract(text, "flexible")


def flexible_correct(text: str, reference: str | float | int, tolerance: float | None) -> bool:
    return _lm_eval_correct(text, reference, tolerance, "flexible")


# ---------------------------------------------------------------------------------------------- numbers in text


def _number_value(match: re.Match) -> Fraction | None:
    def plain(text: str) -> Fraction:
        return Fraction(text.replace(",", ""))

    if match["fn"] is not None:
        numerator, denominator = plain(match["fn"]), plain(match["fd"])
        if match["fsign"]:
            numerator = -numerator
    elif match["mw"] is not None or match["lw"] is not None:
        whole, numerator, denominator = ((int(match["mw"]), int(match["mn"]), int(match["md"]))
                                         if match["mw"] is not None else
                                         (int(match["lw"]), int(match["ln"]), int(match["ld"])))
        if denominator == 0 or numerator >= denominator:
            return None
        value = whole + Fraction(numerator, denominator)
        return -value if match["sign"] else value
    elif match["n"] is not None:
        numerator, denominator = plain(match["n"]), plain(match["d"])
    else:
        mantissa = plain(match["x"]) if match["x"] is not None else Fraction(1)  # "10^6" alone
        numerator, denominator = mantissa * Fraction(10) ** _exponent(match), Fraction(1)
    if denominator == 0:
        return None
    value = numerator / denominator
    return -value if match["sign"] else value


def written_numbers(text: str) -> list[tuple[Fraction, int | None]]:
    """The numbers written in ``text``, in order, each as (value, digits after its decimal point; None for a
    fraction); see the module docstring for the forms."""
    return [(value, decimals) for value, decimals, _ in _numbers_at(_written_form(text))]


def _written_form(text: str) -> str:
    """``text`` with the written forms that are read as others before numbers are (LaTeX thousands separators,
    rupees, dollars and cents, fractions without braces) replaced."""
    text = _DOLLARS_AND_CENTS.sub(lambda m: f"${m['dollars']}.{int(m['cents']):02d}", text)
    text = _BRACELESS_FRAC.sub(r"\1{\2}{\3}", text)
    return _RUPEES.sub("₹", _LATEX_THOUSANDS.sub(",", text))


def _numbers_at(text: str) -> list[tuple[Fraction, int | None, int]]:
    """``written_numbers`` of a text already in ``_written_form``, each with where it starts."""
    return [(value, decimals, start) for value, decimals, start, _ in _number_spans(text)]


def _number_spans(text: str) -> list[tuple[Fraction, int | None, int, int]]:
    """``written_numbers`` of a text already in ``_written_form``, each with where it starts and ends."""
    found, position = [], 0
    while (match := _NUMBER.search(text, position)) is not None:
        position = match.end()
        if len(match.group(0)) > _MAX_NUMBER_CHARS:
            continue
        value = _number_value(match)
        if value is None and (match["mw"] is not None or match["lw"] is not None):
            # "5 10/2" (or "5\frac{10}{2}") is no mixed number: keep the 5 and read on from the 10
            mixed = "mw" if match["mw"] is not None else "lw"
            whole = Fraction(int(match[mixed]))
            value, position = (-whole if match["sign"] else whole), match.start("mn" if mixed == "mw" else "lf")
        if value is not None:
            written = match["x"] or match["ten"]  # a decimal number, or a power of ten written alone
            decimals = None if written is None else max(0, _decimals(written) - _exponent(match))
            found.append((value, decimals, match.start(), position))
    return found


def _exponent(match: re.Match) -> int:
    """The power of ten written after a plain number, or alone ("10^6"); 0 without one."""
    power = match["e"] or match["pb"] or match["p"] or match["tb"] or match["t"]
    return int(power.replace("−", "-")) if power else 0


def _decimals(number: str) -> int:
    return len(number.split(".", 1)[1]) if "." in number else 0


def numbers_in(text: str) -> list[Fraction]:
    """The values of the numbers written in ``text``, in order."""
    return [value for value, _ in written_numbers(text)]


def same_number(predicted: Fraction, expected: Fraction, decimals: int | None, tolerance: float,
                reference_rounding: int | None = None) -> bool:
    """Whether ``predicted`` (written with ``decimals`` digits after the point; None for a fraction) states
    ``expected``: equal within the relative ``tolerance`` (float noise); or ``expected`` rounded to the two or
    more decimals the prediction is written with, when it keeps two or more significant digits ("0.00002" states
    no 0.000024967, "0.00" no 2e-06); or, for a reference that is itself a rounding to ``reference_rounding``
    decimals, ``predicted`` rounded to them (10/3 or "3.333333" for 3.33333). Either way at a
    tie."""
    gap = abs(predicted - expected)
    if gap <= Fraction(tolerance) * max(1, abs(expected)):
        return True
    if (decimals is not None and decimals >= 2 and abs(predicted) >= Fraction(1, 10 ** (decimals - 1))
            and gap <= Fraction(1, 2 * 10**decimals)):
        return True
    return (reference_rounding is not None and (decimals is None or decimals > reference_rounding)
            and gap <= Fraction(1, 2 * 10**reference_rounding))


def reference_rounding(reference: str) -> int | None:
    """The decimals a normalised reference is a rounding to: those of a reference marked ROUNDED_MARK, or of one
    written with ROUNDED_REFERENCE_DECIMALS or more; None for a reference that states its value exactly."""
    decimals = _decimals(reference)
    if reference.startswith(ROUNDED_MARK) or decimals >= ROUNDED_REFERENCE_DECIMALS:
        return decimals
    return None


def plain_reference(reference: str) -> str:
    """A normalised reference without its ROUNDED_MARK ("≈15.33" is "15.33"), for a metric that reads the number."""
    return reference.removeprefix(ROUNDED_MARK)


def _after_last(pattern: re.Pattern, text: str) -> str | None:
    found = list(pattern.finditer(text))
    return text[found[-1].end():] if found else None


def _after_answer_marker(text: str) -> str | None:
    """The text after the last "the answer is", or after the last "Answer:" line whose rest states the answer
    alone: one number (with its unit and markup: "**Final Answer:** $18"), or a hedge ("12 or 13", no answer);
    None without either."""
    ends = [match.end() for match in _ANSWER_IS.finditer(text)]
    for match in _ANSWER_LINE.finditer(text):
        line = text[match.end():].split("\n", 1)[0]
        if len(written_numbers(line)) == 1 or _one_answer(line) is None:
            ends.append(match.end())
    return text[max(ends):] if ends else None


def _last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}``, nested braces included; None without one."""
    found = list(_BOXED.finditer(text))
    if not found:
        return None
    start = found[-1].end()
    depth = 1
    for position in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[position], 0)
        if depth == 0:
            return text[start:position]
    return text[start:]


def _boxed_answer(boxed: str) -> str:
    """The answer part of a ``\\boxed{...}``'s content: the result after its last "=" (``_result_part``), a sign
    set apart from its number kept ("\\boxed{- 7}" is -7, as "#### - 7" is)."""
    return _SPACED_SIGN.sub(r"\1", _result_part(boxed).strip())


def _up_to_sentence_end(text: str) -> str:
    end = _SENTENCE_END.search(text)
    return text[: end.start()] if end else text


def _result_part(text: str) -> str:
    """What follows the last "=" (or "≈", "\\approx") that has a number after it, else the whole text."""
    parts = re.split(r"[=≈]|\\approx", text)
    for part in reversed(parts[1:]):
        if numbers_in(part):
            return part
    return text


def _stated_answer(rest: str) -> str:
    """The answer part of what follows "the answer is" or "####": up to the sentence's end, the restatement after
    a last "which is" when one holds a number and what it restates is not already one number ("16 - 3 - 4, which
    is 9" is 9; "18, which is 9 * 2" is 18), else up to where a justification starts (when a number comes before
    it); of that, the result after its last "=" (``_result_part``)."""
    stated = rest.lstrip(_ANSWER_LEAD)
    part = _up_to_sentence_end(stated)
    if "\n" not in rest[: len(rest) - len(stated)]:  # on the marker's line; "answer is:\n- 18" is a bullet
        part = _SPACED_SIGN.sub(r"\1", part)
    found = list(_RESTATED.finditer(part))
    if found and numbers_in(part[found[-1].end():]) and len(numbers_in(part[: found[-1].start()])) != 1:
        return _result_part(part[found[-1].end():])
    for boundary in _JUSTIFICATION.finditer(part):
        if numbers_in(part[: boundary.start()]):
            part = part[: boundary.start()]
            break
    return _result_part(part)


# ---------------------------------------------------------------------------------------------- lenient


def lenient_number(text: str) -> tuple[Fraction, int | None] | None:
    """The answer a model states in ``text`` under the lenient rules (module docstring), as (value, decimals
    written); None without one."""
    boxed = _last_boxed(text)
    if boxed is not None and numbers_in(boxed):
        return _one_answer(_boxed_answer(boxed))
    rests = (_after_last(_GSM8K_MARKER, text), _after_answer_marker(text))
    for rest in rests:
        if rest is not None and numbers_in(stated := _stated_answer(rest)):
            return _one_answer(stated)
    return _final_sentence_number(text)


def _final_sentence_number(text: str) -> tuple[Fraction, int | None] | None:
    """The value the last sentence of ``text`` that holds a number states, read as a reference's final sentence is
    (``_final_sentence_value``: a side clause or a justification after the value is cut), with the decimals it is
    written with; else, where that reading gives no one value, its last number. A reference solution so states its
    own answer. Ordinals are no numbers in that reading, but a model's ordinal may answer ("she finished in 6th
    place"): in a sentence that holds one, the reading stands only where a verb or an "=" states its value ("there
    were 360 people on the 2nd day", "15 is the 3rd smallest", "150 - 144 = 6 miles on the 13th day")."""
    sentences = _final_sentences(text)
    if not sentences:
        return None
    last = sentences[-1]
    found = written_numbers(last)
    without_ordinals = _ORDINAL.sub("#", last)
    value = _final_sentence_value(without_ordinals, reference=False) if numbers_in(without_ordinals) else None
    if value is not None and (without_ordinals == last or _states_value(_written_form(without_ordinals), value)):
        return next((number for number in reversed(found) if number[0] == value), (value, None))
    return found[-1]


def _states_value(sentence: str, value: Fraction) -> bool:
    """Whether ``sentence`` (in ``_written_form``) writes ``value`` right after a statement verb or an "=", or right
    before a statement verb, at most one word between ("were 360 people", "= 6 miles", "15 is", "15 apples are")."""
    for number, _, start, end in _number_spans(sentence):
        if number == value and (_STATED_BEFORE.search(sentence[max(0, start - 40):start])
                                or _STATED_AFTER.match(sentence, end)):
            return True
    return False


def _final_sentences(text: str) -> list[str]:
    """The sentences of ``text`` that hold a number, once closing paragraphs and closing sentences
    (``_is_closing_sentence``) are cut off."""
    return _without_closing(_sentences_with_numbers(text), _is_closing_sentence)


class _Before:
    """The parts of a text before the one a closing remark may be (the first ``end``), as ``_is_closing_remark``
    asks about them: each part is read once however many closing parts are cut from the end."""

    def __init__(self, parts: list[str]):
        self.parts, self.end = parts, len(parts)
        self._first_with: dict[Fraction, int] | None = None  # each value: the first part that holds it
        self._first_result = len(parts)  # the first part that states a result (``_STATES_RESULT``)

    def _read(self) -> dict[Fraction, int]:
        if self._first_with is None:
            self._first_with = {}
            for at, part in enumerate(self.parts):
                for value in numbers_in(part):
                    self._first_with.setdefault(value, at)
                if self._first_result == len(self.parts) and _STATES_RESULT.search(part):
                    self._first_result = at
        return self._first_with

    def holds(self, value: Fraction) -> bool:
        return self._read().get(value, self.end) < self.end

    def states_result(self) -> bool:
        self._read()
        return self._first_result < self.end


def _without_closing(parts: list[str], is_closing: Callable[[str, _Before], bool]) -> list[str]:
    """``parts`` less the closing ones at the end (``is_closing`` of a last part and those before it); the first is
    kept."""
    before, end = _Before(parts), len(parts)
    while end > 1:
        before.end = end - 1
        if not is_closing(parts[end - 1].strip(), before):
            break
        end -= 1
    return parts[:end]


def _is_closing_sentence(sentence: str, before: _Before) -> bool:
    """A last sentence labelled a remark with a colon ("Note: ...", "Check: 42 - 12 = 30"), or one that checks a
    value written before it as a reference's closing check is cut ("We can verify that 3 * 7 + 2 = 23", "Indeed, 16
    + 18 + 20 = 54"); "Note that he pays $50, so his change is $30" may state the answer."""
    start = _NOTE_START.match(sentence)
    return start is not None and (_is_labelled_remark(sentence)
                                  or (not start["remark"] and _is_closing_remark(sentence, before)))


def _is_labelled_remark(sentence: str) -> bool:
    """A sentence that announces itself as a remark or a check with a colon ("Note: ...", "Check: 42 - 12 = 30",
    "Let's verify: ..."); "Note that he pays $50, so his change is $30" may state the answer."""
    start = _NOTE_START.match(sentence)
    return start is not None and _CHECK_COLON.match(sentence, start.end()) is not None


def _one_answer(part: str) -> tuple[Fraction, int | None] | None:
    """The first number of ``part`` (what a marker states), unless the part offers other values of its kind
    beside it (``_RANGE_WORD`` and the patterns after it): a hedge states no one answer."""
    text = _written_form(part)
    found = _number_spans(text)
    if not found:
        return None
    first = found[0]
    other = next((f for f in found[1:] if f[0] != first[0]), None)
    return None if other is not None and _offers_both(text, first, other) else first[:2]


def _offers_both(text: str, first: tuple[Fraction, int | None, int, int],
                 second: tuple[Fraction, int | None, int, int]) -> bool:
    """Whether the values ``first`` and ``second`` (``_number_spans`` of ``text``) are offered as alternatives, a
    range, a list or an unevaluated expression."""
    gap, after = text[first[3]:second[2]], text[second[3]:]
    # "between 12 and 20" (not "6 handshakes between the 4 friends"); a dash right between two numbers is a range
    # ("12-15", "12–15"; "-15" is no sign there)
    if (_RANGE_WORD.search(text, 0, first[2]) and _RANGE_JOIN.fullmatch(gap)) or gap in ("-", "–"):
        return True
    if _OPERATOR.fullmatch(gap):
        return True
    if _SPACED_MINUS.fullmatch(gap):  # "12 - 3" ends there; "18 - 9 eggs at $2 each" explains the 18
        return not after.strip(" \t.!")
    alternative = _ALTERNATIVE.fullmatch(gap)
    if alternative is None:
        return False
    # "12 or 13", "12 to 15 apples", "12 apples or 13 apples"; not "45 minutes or 0.75 hours"
    unit, unit_after = alternative["unit"].strip().lower(), _UNIT_AFTER.match(after)[1].lower()
    if (unit in _PERCENT_UNITS) != (unit_after in _PERCENT_UNITS) and not (unit and unit_after):
        # a percent beside a plain number restates it only as the same value ("25% or 0.25", "1/2 or 50%")
        percent, plain = (first, second) if unit else (second, first)
        return not (same_number(percent[0], 100 * plain[0], percent[1], FLOAT_NOISE)
                    or same_number(plain[0], percent[0] / 100, plain[1], FLOAT_NOISE))
    return not unit or unit == unit_after


def lenient_value(text: str) -> Fraction | None:
    """The value of ``lenient_number``; None without one."""
    found = lenient_number(text)
    return None if found is None else found[0]


def _as_float(value: Fraction) -> float | None:
    try:
        return float(value)
    except OverflowError:
        return None


def _fraction_text(value: Fraction | None) -> str | None:
    number = None if value is None else _as_float(value)
    return None if number is None else canonical_number(number)


def lenient_extract(text: str) -> str | None:
    """``lenient_value`` as a plain decimal string (``_decimal_text``); None without one."""
    value = lenient_value(text)
    return None if value is None else _decimal_text(value)


def _decimal_text(value: Fraction) -> str:
    """``value`` as a plain decimal string: exact for an integer or a fraction with a finite decimal form, however
    long ("12345678901234567", "0.125"); a fraction whose digits recur to RECURRING_DIGITS significant digits
    after its whole part, more than a double holds (1/3 is "0.33333333333333333")."""
    sign = "-" if value < 0 else ""
    numerator, denominator = abs(value.numerator), value.denominator
    places = _finite_decimals(denominator)
    if places is None:
        whole = numerator // denominator
        with localcontext() as context:
            context.prec = RECURRING_DIGITS + (len(str(whole)) if whole else 0)
            return sign + format((Decimal(numerator) / Decimal(denominator)).normalize(), "f")
    digits = str(numerator * 10**places // denominator).rjust(places + 1, "0")
    return sign + (f"{digits[:-places]}.{digits[-places:]}" if places else digits)


def _finite_decimals(denominator: int) -> int | None:
    """The decimals a fraction of this denominator (in lowest terms) ends after; None where its digits recur."""
    twos = (denominator & -denominator).bit_length() - 1
    rest, fives = denominator >> twos, 0
    while rest % 5 == 0:
        rest, fives = rest // 5, fives + 1
    return max(twos, fives) if rest == 1 else None


def lenient_correct(text: str, reference: str | float | int, tolerance: float | None) -> bool:
    found = lenient_number(text)
    reference_text = reference_answer(reference)
    expected = _exact(reference_text and plain_reference(reference_text))
    if found is None or expected is None:
        return False
    return same_number(found[0], expected, found[1], max(FLOAT_NOISE, tolerance or 0.0),
                       reference_rounding(reference_text))


def _exact(number: str | None) -> Fraction | None:
    """The exact value of a normalised number string ("-12.5", ".25", "72"); None otherwise."""
    if number is None or len(number) > _MAX_NUMBER_CHARS or _PLAIN_NUMBER.fullmatch(number) is None:
        return None
    return Fraction(number)


# ---------------------------------------------------------------------------------------------- references


def _single_value(text: str) -> Fraction | None:
    """The one value written in ``text`` (repeats of it allowed); None for no number or several values."""
    if _SYMBOLIC.search(text):
        return None
    values = set(numbers_in(text))
    return values.pop() if len(values) == 1 else None


def _without_notes(text: str) -> str:
    paragraphs = [p for p in _PARAGRAPH_SPLIT.split(text.strip()) if p.strip()]
    text = "\n\n".join(_without_closing(paragraphs, _is_closing_remark))
    while True:
        cut = _TRAILING_REMARK.sub("", text).rstrip()
        if cut == text.rstrip():
            return cut
        text = cut


def _is_closing_remark(paragraph: str, before: _Before) -> bool:
    """Whether a last paragraph (or sentence) remarks on or checks the answer in ``before`` (``_NOTE_START``)."""
    start = _NOTE_START.match(paragraph)
    if start is None:
        return False
    if start["remark"] or _CHECK_COLON.match(paragraph, start.end()):
        return True
    if start["confirmation"]:
        return before.states_result()
    arrived_at = _arrived_at(paragraph)
    return arrived_at is not None and before.holds(arrived_at)


def _arrived_at(check: str) -> Fraction | None:
    """The value a check arrives at: the first number after its last "=" (``_result_part``), else its last number;
    None without a number."""
    part = _result_part(check)
    values = numbers_in(part)
    if not values:
        return None
    return values[0] if part != check else values[-1]


def prose_reference_value(text: str) -> Fraction | None:
    """The final answer of a worked solution in prose (OrcaMath); None when it is not one clear number.

    In order: the last ``\\boxed{...}`` (a sign set apart kept: "\\boxed{- 7}" is -7); else the rest of the
    sentence after the last "the answer is" (any case) or "Answer:" line with a number next on it; else the last
    sentence that holds a number, once closing remarks are cut off (a last paragraph starting "Note", "Check",
    "Verification", "Let's verify:", "We can check this:" or "Double-check:", one that checks a value written
    before it, "We can double-check that 12 / 4 = 3", not one that works out a new value, a parenthesised remark
    at the end such as "(Note: 1 dozen = 12.)"). That sentence is
    narrowed to what follows its last "so" / "therefore" / "thus" / "hence" / "which means" / "that means",
    then to what follows its last "is" / "are" / "was" / "were" / "be" / "equals" / "costs", each step only
    when a number follows; a clause that comments on a result already stated is cut off first ("..., which is 20%
    less than ...", "... when 25 is divided by 11", a relative clause: "there are 9 numbers that are divisible by
    11" is 9), unless it goes on to work a value out ("..., and each got 2, so 20 / 2 = 10 boys went", "...,
    which rounds up to 17%"), and a sentence stating two results ("the boys are 15 and the girls are 20", "the
    boat's speed is 15 km/h, and the stream's is 5 km/h", "Jimin has 12 marbles, and Yoongi has 8" with any verb
    and after ", and", ", while", "whereas" or ";", also "the length is 12 cm, and its width is 8 cm" and "..., and
    this year he is 13", unless the second points back at the first, "..., and it is divisible by 3", "..., and 20%
    of it is 16", "..., and 2 of them are red", or holds no number; also one that checks the value stated by
    working out another, "the number is 7, and indeed 7 x 3 = 21") gives None. The answer ends where a
    justification starts, after a marker ("5, since 5 + 5 = 10" is 5) and in the final sentence ("..., since 45 - 15 = 30", "... because 150 / 35 = 4.29
    ...", not a "since" clause that leads into a comma-part holding a number: "After 3 days, since she eats 2 a
    day, she has 9 left"; ", as a result ..." and ", as calculated ..." start none). A relative clause before the main clause's verb ("In 5
    years, John, who is now 15, will be 20") and a clause that states the result ("..., which leaves her with 9
    apples", "..., which means he has 9") are part of the main clause. Of the part chosen, what follows its last "="
    counts when that holds a number. The part must hold exactly one value, written once or more in any form ("11/4, or
    2 3/4"): "5 hours and 30 minutes", "12 boys and 15 girls", "the ratio is 3:4" or "Jin saves $100 in 8 weeks"
    give None, and such rows are dropped (``unparsable_answers: skip``) rather than guessed. Also None, since the
    answer is not one plain number or not clearly which: a value the sentence restates as another ("25% of the
    students, which is 10 students"), a comparison of two values ("15 is 5 more than 10"), a number word from
    eleven up or a weekday beside the digits, a multiple of pi, a root or a variable ("25π", "\\sqrt{50}", "4x"),
    and an answer after "the answer is" that a later sentence states otherwise without working with it ("...
    4.67 buses. ..., 5 buses are needed."), and a subject that counts some of a group beside a value after the verb
    ("4 of the 10 numbers are equal to 2"). A clause that starts with its value keeps it when the verb has no
    value right after it ("Rs. 300 is the interest for 3 years"); a closing check in the last paragraph ("Check:
    3 * 7 + 2 = 23.", "Indeed, 9 × 4 = 36.") is cut by the rules of a closing paragraph; "0.333..." is a rounding;
    ordinals and "3-digit" are no numbers.
    """
    boxed = _last_boxed(text)
    if boxed is not None:
        return _single_value(_boxed_answer(boxed))
    text = _ORDINAL.sub("#", text)
    rest = _after_answer_marker(text)
    if rest is not None:
        value = _single_value(_stated_answer(rest))
        # "The answer is 4.67 buses. Since ..., 5 buses are needed.": revised, so no clear answer; a sentence that
        # works with the answer ("This is because 3 × 4 = 12", "Check: 20 + 5 = 25") revises nothing
        stated = _without_notes(rest.lstrip(_ANSWER_LEAD))  # a closing "Note: ..." paragraph revises nothing
        later = _stated_sentences(stated[end.end():]) if (end := _SENTENCE_END.search(stated)) else []
        revised = any((other := _narrowed_value(s)) is not None and other != value and value not in numbers_in(s)
                      for s in later)
        return None if revised else value
    sentences = _stated_sentences(text)
    return _final_sentence_value(sentences[-1], reference=True) if sentences else None


def _final_sentence_value(sentence: str, *, reference: bool) -> Fraction | None:
    """The value a solution's final sentence states, by ``prose_reference_value``'s rules; None where it is not one
    clear number. ``reference``: whether the sentence ends a reference, not a model's output (``_main_clause``)."""
    main = _main_clause(sentence, reference=reference)
    value = _narrowed_value(main)
    side = sentence[len(main):]
    if value is None and side:
        # "... need 9/2 cups, which is 4 1/2 cups": the clause restates a value of the main clause in another form
        restated = _narrowed_value(sentence)
        if restated is not None and restated in numbers_in(main):
            value = restated
        return value
    # "..., which is 10 students" restates; "..., which is 15 more than Tom" compares
    restated = _narrowed_value(side) if _RESTATED.match(side) and not _COMPARISON.search(side) else None
    if value is not None and restated is not None and restated != value and not _PERCENT_AFTER.search(side):
        # "25% of the students, which is 10 students, like math": which of the two was asked ("$30, which is 25%
        # of his money" comments on its value)
        return None
    return value


def _stated_sentences(text: str) -> list[str]:
    """The sentences of ``text`` that hold a number, closing remarks cut off: closing paragraphs, then closing
    checks in the last paragraph ("... x = 7. Check: 3 * 7 + 2 = 23.")."""
    return _without_closing(_sentences_with_numbers(text), _is_closing_remark)


def _sentences_with_numbers(text: str) -> list[str]:
    """The sentences of ``text`` that hold a number, once closing paragraphs and a parenthesised remark at the end
    are cut off (``_without_notes``)."""
    return [s for s in _SENTENCE_SPLIT.split(_without_notes(text)) if numbers_in(s)]


def _narrowed_value(sentence: str) -> Fraction | None:
    rest = _after_last(_CONCLUSION, sentence)
    if rest is not None and numbers_in(rest):
        sentence = rest
    sentence = _before_justification(sentence)
    if len(_NUMBER_STATEMENT.findall(sentence)) > 1:  # "the boys are 15 and the girls are 20": two results
        return None
    sentence = _written_form(sentence)
    verbs = list(_STATEMENT.finditer(sentence))
    rest = sentence[verbs[-1].end():] if verbs else None
    subject = sentence[: verbs[-1].start()].lstrip(" ,:*") if verbs else ""
    if rest is not None and numbers_in(rest) and _PARTITIVE.match(subject):
        return None  # "4 of the 10 numbers are equal to 2": the count or the value, not clearly which
    if rest is not None and numbers_in(rest) and _NUMBER.match(subject) and len(numbers_in(subject)) == 1 \
            and "=" not in rest and not _VALUE_AFTER_VERB.match(sentence, verbs[-1].start()):
        # "Rs. 300 is the interest for 3 years", "7/8 is bigger than 0.85": the clause starts with its value, and
        # the verb names what it is
        rest = None
        sentence = subject
    if rest is not None and numbers_in(rest):
        than = _COMPARISON.search(rest)
        if than and numbers_in(rest[: than.start()]) and numbers_in(rest[than.end():]):
            return None  # "15 is 5 more than 10": two values compared ("5 more boys than girls" is one)
        sentence = rest
    if _NOT_NUMERIC.search(sentence):  # "... has thirty-five marbles", "..., which is Wednesday"
        return None
    return _single_value(_result_part(sentence))


def _before_justification(sentence: str) -> str:
    """The sentence up to where a justification starts, when a number comes before it ("the number is 45, since
    45 - 15 = 30"; "5 buses are needed because 150 / 35 = 4.29 ..."); not a clause that leads into the next comma-part
    when that holds a number ("At 132 mph, since distance = speed * time, he covers 528 miles", "After 3 days, since
    she eats 2 apples a day, she has 9 apples left")."""
    commas = [comma.end() for comma in _COMMA_BREAK.finditer(sentence)]
    parts_with_numbers: dict[int, bool] = {}  # each comma-part read once, however many boundaries lead into it
    number_before, first_digit = False, _first_digit(sentence)
    for boundary in _FINAL_JUSTIFICATION.finditer(sentence):
        at = bisect.bisect_left(commas, boundary.end() + 1)  # the first comma-part that starts after the boundary
        if at < len(commas):
            if at not in parts_with_numbers:
                part_end = commas[at + 1] if at + 1 < len(commas) else len(sentence)
                parts_with_numbers[at] = bool(numbers_in(sentence[commas[at]:part_end]))
            if parts_with_numbers[at]:
                continue  # it leads into the result
        start = boundary.start()
        number_before = number_before or (first_digit < start and bool(numbers_in(sentence[:start])))
        if number_before:
            return sentence[:start]
    return sentence


def _main_clause(sentence: str, *, reference: bool) -> str:
    """The sentence up to its first clause that only comments on a result already stated ("..., which is 20% less
    than ...", "... when 25 is divided by 11", "..., and 20% of it is 16", "there are 9 numbers that are divisible
    by 11"), when a number comes before it; a clause that goes on to work a value out ("..., and each got 2, so 20 /
    2 = 10 boys went") or to state it ("..., which leaves her with 9 apples") is no comment, and a relative clause
    before the main clause's verb ("The 3 boys who were late missed 10 minutes") is part of the main clause. A
    clause that states a second result leaves the main clause empty: in a ``reference``, one after ", and", ",
    while", "whereas" or ";" that holds a number and does not point back at the result ("Jimin has 12 marbles, and
    Yoongi has 8 marbles", "the length is 12 cm; its width is 8 cm"; not "..., and 2 of them are red"); in a model's
    output, as before scoring version 20, only one after ", and" with a statement verb before a number on both
    sides and no pronoun ("the boat's speed is 15 km/h, and the stream's is 5 km/h"; "So, Yoongi has 8 marbles, and
    he gave 4 away." and "12 is the answer, and 3 is the remainder" state the first value: a model that states its
    answer first is read so). In a ``reference``, a clause that checks the value stated by working out another
    ("the number is 7, and indeed 7 x 3 = 21", ``_CHECK_CLAUSE``) leaves it empty too."""
    clauses = list(_SIDE_CLAUSE.finditer(sentence))
    number_before, first_digit = False, _first_digit(sentence)
    for at, clause in enumerate(clauses):
        start = clause.start()
        if _RELATIVE.match(sentence, start) and _STATEMENT.search(sentence, 0, start) is None:
            continue  # "In 5 years, John, who is now 15, will be 20": the main clause's verb comes after it
        clause_end = clauses[at + 1].start() if at + 1 < len(clauses) else len(sentence)
        if _RESULT_CLAUSE.match(sentence, start) and numbers_in(sentence[start:clause_end]):
            continue  # "..., which leaves her with 9 apples": it states the result
        number_before = number_before or (first_digit < start and bool(numbers_in(sentence[:start])))
        after = sentence[clause.end():]
        if number_before and reference and _CHECK_CLAUSE.match(after) and _works_out(after):
            return ""  # "the number is 7, and indeed 7 x 3 = 21": a check of the value stated (``_CHECK_CLAUSE``)
        if number_before and not _works_out(after):
            if reference:
                # "the boat's speed is 15 km/h, and the stream's is 5 km/h", "Jimin has 12 marbles, and Yoongi has 8
                # marbles": two results, whatever their verbs, so no answer
                second = (_TWO_RESULTS.match(clause.group(0)) is not None and not _BACK_REFERENCE.search(after)
                          and bool(numbers_in(after)))
            else:
                second = (clause.group(0).lstrip(", ").lower().startswith("and") and not _ANY_PRONOUN.search(after)
                          and _NUMBER_STATEMENT.search(after) is not None
                          and _NUMBER_STATEMENT.search(sentence[:start]) is not None)
            if second:
                return ""
            return sentence[:start]
    return sentence


def _first_digit(text: str) -> int:
    """Where the first digit of ``text`` is (its length without one): no number is written before it."""
    digit = _DIGIT.search(text)
    return digit.start() if digit is not None else len(text)


def _works_out(clause: str) -> bool:
    """Whether a clause works a value out: an "=" with a number on either side ("... so 24 + 10 = 34"; not "when x =
    5"), or a conclusion word or a rounding with a number after it ("..., so she has 12 left", "..., which rounds up
    to 17%")."""
    before, *results = clause.split("=")
    if numbers_in(before) and any(numbers_in(result) for result in results):
        return True
    rest = _after_last(_WORKED_OUT, clause)
    return rest is not None and bool(numbers_in(rest))


def reference_answer(answer: str | float | int) -> str | None:
    """The normalised reference for a dataset answer; None when it holds no number.

    GSM8K solutions give the number of their last line of "####" and a number (a markdown heading "#### 2.
    Cost" is no such line); a bare number string is normalised as lm-eval would; other prose gives
    ``prose_reference_value`` as a canonical number string, marked ROUNDED_MARK at its written decimals when the
    solution states it as a rounding (``_rounding_decimals``); ints and floats give canonical_number.
    """
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise TypeError(f"reference answer must be str, int or float, not {type(answer).__name__}")
    if not isinstance(answer, str):
        return canonical_number(answer)
    lines = list(_GSM8K_ANSWER_LINE.finditer(answer))
    if lines:  # as lm-eval takes it (a non-number such as "1.2.3" is kept, and matches nothing)
        return _answer_or_none(re.sub(r"[ \t]", "", lines[-1]["answer"].replace("−", "-")))
    marked = _marked_last_line(answer)
    if marked is not None:  # "#### 5 apples", "... #### 8" ending the solution
        return _fraction_text(_single_value(_stated_answer(marked)))
    stripped = answer.strip()
    if _BARE_ANSWER.fullmatch(stripped):
        return normalise(stripped)
    if stripped.startswith(ROUNDED_MARK) and _BARE_ANSWER.fullmatch(stripped[len(ROUNDED_MARK):]):
        return ROUNDED_MARK + normalise(stripped[len(ROUNDED_MARK):])  # a stored reference, read again
    value = prose_reference_value(answer)
    reference = _fraction_text(value)
    decimals = None if reference is None else _rounding_decimals(answer, value)
    if decimals is not None:
        return ROUNDED_MARK + format(Decimal(value.numerator) / Decimal(value.denominator), f".{decimals}f")
    return reference


def _rounding_decimals(text: str, value: Fraction) -> int | None:
    """The decimals a prose answer states its (non-whole) value to, when it states it as a rounding: right after
    "approximately", "about", "≈", "\\approx", "~" ("approximately $15.30": 2, as written), or with "rounded" /
    "rounding" in the sentence that last states the value or in what follows it ("15.33 (rounded to two decimal
    places)"), not negated ("without rounding, the exact average is 2.5"). None otherwise."""
    if value.denominator == 1:
        return None
    text = _written_form(text)
    for repeating in _REPEATING.finditer(text):  # "3.33..." for 10/3
        if Fraction(repeating["number"]) == value:
            return _decimals(repeating["number"])
    for marker in _APPROXIMATE.finditer(text):
        found = _numbers_at(text[marker.end(): marker.end() + _MAX_NUMBER_CHARS])
        if found and found[0][0] == value and found[0][1]:
            return found[0][1]
    stated = [(decimals, start) for number, decimals, start in _numbers_at(text) if number == value and decimals]
    if not stated:
        return None
    decimals, start = stated[-1]
    # the clause that states the value: from its sentence's start, or the last "so"/"therefore" before it, to
    # the sentence's end ("The rounding error is 0.01, so the answer is 12.5" is no rounding)
    clause_start = max([m.end() for m in _SENTENCE_SPLIT.finditer(text, 0, start)]
                       + [m.end() for m in _CONCLUSION.finditer(text, 0, start)] + [0])
    end = _SENTENCE_SPLIT.search(text, start)
    clause = text[clause_start: end.start() if end else len(text)]
    return decimals if any(_states_rounding(clause, m, value) for m in _ROUNDED.finditer(clause)) else None


def _states_rounding(clause: str, mention: re.Match, value: Fraction) -> bool:
    """Whether a "rounded"/"rounding" in the clause of a value says the value is a rounding: not negated around
    it ("no need for rounding", "rounding is not needed"), and not a rounding of another number ("12.5, which
    rounded is 13"; "rounded to 2 decimal places" names a precision)."""
    around = clause[max(0, mention.start() - _NEGATION_REACH): mention.end() + _NEGATION_REACH]
    if mention["negated"] or _NEGATION.search(around):
        return False
    after = clause[mention.end(): mention.end() + 25]
    other = next((m for m in _numbers_at(after)), None)
    return other is None or other[0] == value or _PRECISION.match(after[other[2]:]) is not None


def has_gsm8k_marker(text: str) -> bool:
    """Whether a reference solution marks its answer GSM8K's way: a line of "####" and a number, or a last line
    holding "####" and a number ("#### 5 apples")."""
    return _GSM8K_ANSWER_LINE.search(text) is not None or _marked_last_line(text) is not None


def _marked_last_line(text: str) -> str | None:
    """What follows "####" and a number on the last non-empty line (a heading earlier in the text is no marker)."""
    lines = text.strip().splitlines()
    return _after_last(_GSM8K_MARKER, lines[-1]) if lines else None


def _check_tolerance(tolerance: float) -> None:
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}")


def numbers_close(prediction: str, reference: str, tolerance: float) -> bool:
    """``same_number`` for a normalised number string and a normalised reference (which may be marked
    ROUNDED_MARK); False if either is not one."""
    predicted, expected = _exact(prediction), _exact(plain_reference(reference))
    if predicted is None or expected is None:
        return False
    return same_number(predicted, expected, _decimals(prediction), tolerance, reference_rounding(reference))


# ---------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Metric:
    name: str
    extract: Callable[[str], str | None]  # recorded per prediction as extracted_<name>
    correct: Callable[[str, str | float | int, float | None], bool]  # recorded as correct_<name>


METRICS: dict[str, Metric] = {
    metric.name: metric
    for metric in (
        Metric("strict", strict_extract, strict_correct),
        Metric("flexible", flexible_extract, flexible_correct),
        Metric("lenient", lenient_extract, lenient_correct),
    )
}
MODES = tuple(METRICS)
# The score the report ranks by, flags negative transfer with and plots.
PRIMARY_METRIC = "flexible"


def accuracy_key(name: str) -> str:
    return f"accuracy_{name}"


ACCURACY_KEYS = tuple(accuracy_key(name) for name in METRICS)
PREDICTION_FIELDS = (*(f"extracted_{name}" for name in METRICS), *(f"correct_{name}" for name in METRICS))


_METRIC_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def register_metric(name: str, extract: Callable[[str], str | None],
                    correct: Callable[[str, str | float | int, float | None], bool]) -> Metric:
    """Add a metric: from then on every prediction records ``extracted_<name>`` and ``correct_<name>`` and every
    scored set ``accuracy_<name>``. A module named in ``eval.metric_modules`` calls this when it is imported; the
    module's source is part of the cell's evaluation key, so editing it re-scores."""
    if not _METRIC_NAME.match(name):
        raise ValueError(f"metric name {name!r} must be lower-case letters, digits and '_', starting with a letter")
    if name in METRICS:
        raise ValueError(f"a metric named {name!r} is already registered ({', '.join(METRICS)})")
    metric = METRICS[name] = Metric(name, extract, correct)
    _derive_names()
    return metric


def _derive_names() -> None:
    global MODES, ACCURACY_KEYS, PREDICTION_FIELDS
    MODES = tuple(METRICS)
    ACCURACY_KEYS = tuple(accuracy_key(name) for name in METRICS)
    PREDICTION_FIELDS = (*(f"extracted_{name}" for name in METRICS), *(f"correct_{name}" for name in METRICS))


_BUILT_IN: dict[str, Metric] = dict(METRICS)
_REGISTERED_BY: dict[str, dict[str, Metric]] = {}  # module name -> the metrics its import registered
# Called with a metric module's name right after import_metric_module imported it to score with: slm_sweep.identity
# hashes the module's code there (pin_metric_module), the code the cells of this process score with.
METRIC_MODULE_IMPORTED: list[Callable[[str], None]] = []


METRICS_PACKAGE = "slm_sweep.metrics"


def folder_metric_modules() -> list[str]:
    """The modules of the metrics folder (slm_sweep/metrics/: every ``<name>.py`` not starting with ``_``),
    sorted: a metric dropped there is scored by every cell."""
    import importlib
    import pkgutil

    package = importlib.import_module(METRICS_PACKAGE)
    return sorted(f"{METRICS_PACKAGE}.{module.name}" for module in pkgutil.iter_modules(package.__path__)
                  if not module.name.startswith("_"))


def metric_module_names(configured=()) -> list[str]:
    """The metrics folder's modules, then those ``eval.metric_modules`` names: what a cell scores with."""
    return list(dict.fromkeys([*folder_metric_modules(), *map(str, configured or ())]))


def use_metric_modules(names) -> None:
    """Score with the built-in metrics and those the modules of ``eval.metric_modules`` register, and no other.

    A module registers its metrics when it is imported, which Python does once per process; the cells of one
    sweep share a process. So each module's metrics are remembered and put back for every cell that names it,
    and a metric of an earlier cell's module does not carry over into a cell that does not.
    """
    METRICS.clear()
    METRICS.update(_BUILT_IN)
    for name in map(str, names or ()):
        for metric_name, metric in import_metric_module(name).items():
            if METRICS.get(metric_name, metric) is not metric:
                raise ValueError(f"eval.metric_modules: {name} registers a metric named {metric_name!r}, which "
                                 "another module of the list registers too")
            METRICS[metric_name] = metric
    _derive_names()


def import_metric_module(name: str) -> dict[str, Metric]:
    """The metrics a metric module registers, importing it the first time (once per process; reloaded when other
    code imported it already, whose import registered nothing here) with only the built-in metrics registered,
    which are left as they were. Then each of METRIC_MODULE_IMPORTED is called with its name: identity hashes its
    code there, since the cells of the process score with what was imported then, and their keys must hold that
    code, not the file as edited since."""
    import importlib
    import sys

    if name not in _REGISTERED_BY:
        current = dict(METRICS)
        METRICS.clear()
        METRICS.update(_BUILT_IN)
        try:
            if name in sys.modules:  # imported by other code than this: importing again registers nothing
                importlib.reload(sys.modules[name])
            else:
                importlib.import_module(name)
            _REGISTERED_BY[name] = {k: v for k, v in METRICS.items() if k not in _BUILT_IN}
        finally:
            METRICS.clear()
            METRICS.update(current)
            _derive_names()
        for imported in METRIC_MODULE_IMPORTED:
            imported(name)
    return _REGISTERED_BY[name]


def forget_metric_modules() -> None:
    """Forget which metrics each module registered: the next use imports (reloads) it again. For tests
    (identity.forget_running_code)."""
    _REGISTERED_BY.clear()


def check_mode(mode: str) -> None:
    """Raise ValueError unless ``mode`` is one of MODES."""
    if mode not in MODES:
        raise ValueError(f"unknown scoring mode {mode!r}; expected one of {', '.join(MODES)}")


def extract_answer(text: str, mode: str) -> str | None:
    """The answer a model gave in ``text`` under metric ``mode`` (normalised as that metric records it)."""
    check_mode(mode)
    return METRICS[mode].extract(text)


def is_correct(text: str, reference: str | float | int, mode: str, tolerance: float | None = None) -> bool:
    """Whether the answer extracted from ``text`` matches the reference under metric ``mode``.

    For strict and flexible, ``tolerance`` None is lm-eval's exact match of normalised strings ("72.0" !=
    "72"); otherwise both sides are compared as numbers with a relative tolerance. Lenient always compares
    numbers (see the module docstring).
    """
    check_mode(mode)
    if tolerance is not None:
        _check_tolerance(tolerance)
    return METRICS[mode].correct(text, reference, tolerance)


class MetricError(ValueError):
    """A registered metric that raised or returned the wrong type; the message names the metric and its module."""


def score(text: str, reference: str | float | int, tolerance: float | None) -> dict[str, str | bool | None]:
    """Every metric's ``extracted_<name>`` and ``correct_<name>`` for one output, in PREDICTION_FIELDS order."""
    if tolerance is not None:
        _check_tolerance(tolerance)
    extracted = {f"extracted_{name}": _called(metric, "extract", text) for name, metric in METRICS.items()}
    correct = {f"correct_{name}": _called(metric, "correct", text, reference, tolerance)
               for name, metric in METRICS.items()}
    return {**extracted, **correct}


def _called(metric: Metric, part: str, text: str, *args):
    """``metric.<part>`` on one output, its result checked: extract gives a string or None, correct a bool."""
    function = getattr(metric, part)
    where = f"metric {metric.name!r} ({getattr(function, '__module__', '?')}.{getattr(function, '__name__', part)})"
    try:
        value = function(text, *args)
    except Exception as err:
        raise MetricError(f"{where} raised {type(err).__name__}: {err} on the output {text[:120]!r}"
                          + (f" against the reference {args[0]!r}" if args else "")) from err
    if part == "correct":
        if type(value).__name__ not in ("bool", "bool_"):  # numpy's bool too
            raise MetricError(f"{where} returned {value!r} ({type(value).__name__}); correct must return a bool")
        return bool(value)
    if value is not None and not isinstance(value, str):
        raise MetricError(f"{where} returned {value!r} ({type(value).__name__}); extract must return a string "
                          "or None")
    return value


def check_metrics() -> None:
    """Run every registered metric once on a made-up answer, so that a metric module that raises or returns the
    wrong type fails before a cell reads data or trains, not when its first answer is scored."""
    score("She has 3 + 4 = 7 apples.\nThe answer is 7.\n#### 7", "7", None)
