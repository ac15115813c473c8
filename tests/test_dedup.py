"""Deduplication of training data against evaluation sets (slm_sweep.data.dedup, load_splits(deduplicate=True)):
normalisation, exact and near duplicates, the threshold's edges, exactness against a brute-force reference, what
load_splits records, missing sets, and a training key that does not follow eval.ood_sets."""

from __future__ import annotations

import itertools
import json
import math
import random
from fractions import Fraction
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import slm_sweep.data.dedup as dedup
from slm_sweep.data import DataError, dataset_spec, load_splits
from slm_sweep.data.dedup import DedupIndex, deduplicate, normalise_question
from slm_sweep.data.readers import Example
from slm_sweep.results import redact
from slm_sweep.run import identify, load_data


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def gsm(question: str, number: int = 1) -> dict:
    return {"question": question, "answer": f"So it is {number}.\n#### {number}"}


def char_grams(text: str) -> set[bytes]:
    """The reference definition: distinct 5-byte windows of the normalised text, or the whole text if shorter."""
    data = normalise_question(text).encode()
    return {data[i : i + 5] for i in range(len(data) - 4)} if len(data) >= 5 else {b"<" + data}


def jaccard(a: str, b: str) -> Fraction:
    x, y = char_grams(a), char_grams(b)
    return Fraction(len(x & y), len(x | y))


# ---------------------------------------------------------------------------------------------- normalisation


def test_normalisation_keeps_words_numbers_and_signs_and_drops_case_punctuation_and_separators():
    assert normalise_question("  Tom has $1,200.50; how MUCH?\n") == "tom has 1200.50 how much"
    assert normalise_question("It costs 3/4 of 2,5 apples.") == "it costs 3 / 4 of 2 5 apples"
    assert normalise_question("What is 3 + 4?") != normalise_question("What is 3 - 4?")
    assert normalise_question("Café: 12,345,678 items") == "café 12345678 items"
    assert normalise_question("Tom has 5 apples.") != normalise_question("Tom has 6 apples.")


def test_exact_duplicates_differ_only_in_case_spacing_and_punctuation():
    index = DedupIndex({"test": ["Tom has 5 apples. How many apples does he have?"]}, near_threshold=1.0)
    same, other_number = index.matches(["tom has 5 apples;  how many   apples does he have", "Tom has 6 apples. "
                                        "How many apples does he have?"])
    assert same.exact == ["test"] and same.near == [] and same.similarity == 1.0
    assert not other_number.exact


def test_a_changed_number_is_a_near_duplicate_when_similar_enough():
    question = "Tom has 5 apples and buys 12 more at the market on Sunday. How many apples does he have now?"
    variant = question.replace("12", "13")
    index = DedupIndex({"test": [question]}, near_threshold=0.5)
    [match] = index.matches([variant])
    assert match.exact == [] and match.near == ["test"]
    assert match.similarity == pytest.approx(float(jaccard(question, variant)))
    assert match.closest == ("test", 0)


def test_unrelated_questions_do_not_match():
    index = DedupIndex({"test": ["A train travels 60 miles in 2 hours. What is its speed?"]}, near_threshold=0.5)
    assert not index.matches(["Sara bakes 12 cookies and eats 3. How many cookies are left?"])[0]


# ---------------------------------------------------------------------------------------------- threshold edges


def test_a_pair_exactly_at_the_threshold_matches_and_just_above_does_not():
    # 'abcdefghij' has 6 five-grams, all shared with 'abcdefghijklmnop' (12): Jaccard exactly 1/2
    short, long = "abcdefghij", "abcdefghijklmnop"
    assert jaccard(short, long) == Fraction(1, 2)
    assert DedupIndex({"test": [long]}, near_threshold=0.5).matches([short])[0].near == ["test"]
    assert not DedupIndex({"test": [long]}, near_threshold=0.5001).matches([short])[0]
    # 4 of 7 five-grams shared: the similarity is 4/7 as the nearest float64, which a threshold of that same float
    # reaches and the next float up does not
    short, long = "abcdefgh", "abcdefghijk"
    assert jaccard(short, long) == Fraction(4, 7)
    nearest = 4 / 7
    next_up = math.nextafter(nearest, 1.0)
    assert DedupIndex({"test": [long]}, near_threshold=nearest).matches([short])[0].near == ["test"]
    assert not DedupIndex({"test": [long]}, near_threshold=next_up).matches([short])[0]


@pytest.mark.parametrize("value", [0, -0.1, 1.5, True])
def test_threshold_must_be_in_zero_one(value):
    with pytest.raises(ValueError, match="near_threshold"):
        DedupIndex({"test": ["x"]}, near_threshold=value)


def test_short_texts_match_only_themselves():
    index = DedupIndex({"test": ["7, 8", "x"]}, near_threshold=0.1)  # shorter than 5 bytes once normalised
    matches = index.matches(["7 8?", "7 9", "X.", "xy"])
    assert [bool(m) for m in matches] == [True, False, True, False]
    assert matches[0].exact == ["test"] and matches[2].exact == ["test"]


# ---------------------------------------------------------------------------------------------- exactness


@pytest.mark.parametrize(("threshold", "common_after"), [(0.3, 1), (0.5, 3), (0.5, 1000), (0.8, 1)])
def test_every_pair_at_or_above_the_threshold_is_found_as_brute_force_finds_it(monkeypatch, common_after, threshold):
    """Random template questions (shared wording, other names and numbers) against a brute-force Jaccard: the
    pruning bound and the common/rare split change the speed, never the answer."""
    monkeypatch.setattr(dedup, "COMMON_AFTER", common_after)
    rng = random.Random(7)
    names = ["Tom", "Ana", "Li", "Sara", "Omar", "Eve"]
    things = ["apples", "pens", "cards", "eggs"]
    templates = ["{n} has {a} {t} and buys {b} more. How many {t} does {n} have?",
                 "{n} sells {a} {t} each day for {b} days. How many {t} are sold?",
                 "How many {t} are left if {n} had {a} and gave away {b}?",
                 "A bus leaves at {a} o'clock and drives for {b} hours; when does it arrive?",
                 "What is {a} times {b}?"]

    def question() -> str:
        return rng.choice(templates).format(n=rng.choice(names), t=rng.choice(things), a=rng.randint(1, 20),
                                            b=rng.randint(1, 20))

    references = {"test": [question() for _ in range(40)], "other": [question() for _ in range(25)]}
    queries = [question() for _ in range(60)]
    matches = DedupIndex(references, threshold).matches(queries)
    limit = Fraction(str(threshold))
    similarity = {(query, name, ref): jaccard(query, ref) for query in queries
                  for name, questions in references.items() for ref in questions}
    for query, match in zip(queries, matches):
        expected_near = {name for (q, name, _), value in similarity.items() if q == query and value >= limit}
        expected_exact = {name for name, questions in references.items()
                          if normalise_question(query) in {normalise_question(q) for q in questions}}
        assert set(match.exact) == expected_exact
        assert set(match.near) == expected_near - expected_exact
    # the sample holds pairs just above and just below the threshold, where a wrong bound would show
    assert any(limit <= value < 1 for value in similarity.values())
    assert any(limit - Fraction(1, 10) <= value < limit for value in similarity.values())


def test_deduplicate_keeps_order_counts_per_set_and_stops_at_the_limit():
    index = DedupIndex({"test": ["What is 12 plus 30?"], "other": ["what is 12 plus 30", "Name a colour."]}, 0.9)
    examples = [Example(q, "", "1") for q in ["A fresh question about trains.", "WHAT IS 12 PLUS 30?",
                                              "Another new one.", "Name a colour!", "A fourth, unseen question."]]
    kept, counts = deduplicate(examples, index)
    assert [e.question for e in kept] == ["A fresh question about trains.", "Another new one.",
                                          "A fourth, unseen question."]
    assert counts.as_record() == {"examined": 5, "removed": 2, "exact": 2, "near": 0,
                                  "by_set": {"test": {"exact": 1, "near": 0}, "other": {"exact": 2, "near": 0}}}
    kept, counts = deduplicate(examples, index, limit=2)
    assert len(kept) == 2 and counts.examined == 3


# ---------------------------------------------------------------------------------------------- load_splits


TEST_QUESTIONS = [
    "Mia has 12 marbles and gives 2 of them to her friend Leo. How many marbles does Mia have left?",
    "A farmer plants 7 rows of 9 apple trees each in his orchard. How many apple trees does he plant?",
    "Sam reads 15 pages of his book every evening for 6 evenings. How many pages does Sam read?",
]


def folder(tmp_path: Path, train: list[str], test: list[str] = TEST_QUESTIONS) -> Path:
    data = tmp_path / "data"
    write_jsonl(data / "train.jsonl", [gsm(q, i) for i, q in enumerate(train)])
    write_jsonl(data / "test.jsonl", [gsm(q, i) for i, q in enumerate(test)])
    return data


def spec(data: Path, **dedup_settings) -> dict:
    return {**OmegaConf.to_container(dataset_spec("gsm8k")), "data_dir": str(data), "val_size": None,
            "dedup": {"against": [], **dedup_settings}}


FRESH = [f"Question {i}: a shop sells {i} kinds of {thing}." for i, thing in
         zip(range(20), itertools.cycle(["bread", "tea", "rice", "soap"]))]
EXACT = "mia has 12 marbles, and gives 2 of them to her friend leo; how many marbles does mia have left"
NEAR = TEST_QUESTIONS[1].replace("7 rows", "8 rows")


def test_train_examples_repeating_a_test_question_are_removed_and_counted(tmp_path):
    data = folder(tmp_path, [FRESH[0], EXACT, FRESH[1], NEAR, FRESH[2]])
    splits = load_splits(spec(data), deduplicate=True)
    assert [e.question for e in splits.train] == FRESH[:3]
    assert splits.dedup["train"] == {"examined": 5, "removed": 2, "exact": 1, "near": 1,
                                     "by_set": {"test": {"exact": 1, "near": 1}}}
    assert splits.dedup["against"] == {"test": 3} and splits.dedup["skipped"] == {}
    assert splits.dedup["near_threshold"] == 0.5
    assert load_splits(spec(data), deduplicate=False).dedup is None
    assert len(load_splits(spec(data), deduplicate=False).train) == 5
    off = load_splits(spec(data, enabled=False), deduplicate=True)
    assert len(off.train) == 5 and off.dedup == {"enabled": False}
    strict = load_splits(spec(data, near_threshold=0.99), deduplicate=True)
    assert strict.dedup["train"]["near"] == 0 and len(strict.train) == 4


def test_a_training_split_that_deduplication_empties_stops_before_any_model_loads_and_says_why(tmp_path):
    data = folder(tmp_path, [EXACT, NEAR])
    with pytest.raises(DataError, match=r"deduplication removed all 2 training examples \(1 exact and 1 near "
                                         r"repeats, Jaccard >= 0.5\).*dataset.dedup.enabled=false"):
        load_splits(spec(data), deduplicate=True)
    assert len(load_splits(spec(data, enabled=False), deduplicate=True).train) == 2


def test_the_whole_test_split_counts_whatever_test_limit_and_validation_is_deduplicated(tmp_path):
    train = [FRESH[0], FRESH[1], NEAR, FRESH[2], FRESH[3], EXACT, FRESH[4], FRESH[5]]
    data = folder(tmp_path, train)
    splits = load_splits({**spec(data), "test_limit": 1, "val_size": 4}, deduplicate=True)
    assert len(splits.test) == 1  # scored: the first test question only; deduplicated against all three
    assert all(e.question not in (NEAR, EXACT) for e in splits.train + splits.val)
    assert splits.dedup["train"]["removed"] + splits.dedup["val"]["removed"] == 2
    assert len(splits.train) + len(splits.val) == 6


def test_train_limit_counts_the_examples_left_after_deduplication(tmp_path):
    data = folder(tmp_path, [EXACT, NEAR, *FRESH])
    splits = load_splits({**spec(data), "train_limit": 5}, deduplicate=True)
    assert len(splits.train) == 5 and {e.question for e in splits.train} <= set(FRESH)
    record = splits.dedup["train"]
    assert record["examined"] - record["removed"] == 5  # examined until five were kept, repeats not counted


def test_an_against_set_is_read_in_full_from_data_root(tmp_path):
    root = tmp_path / "root"
    svamp_question = "There are 87 oranges and 290 bananas in Philip's collection. How many bananas are there?"
    (root / "svamp").mkdir(parents=True)
    (root / "svamp" / "SVAMP.json").write_text(json.dumps(
        [{"Body": "There are 87 oranges and 290 bananas in Philip's collection", "Question": "How many bananas "
          "are there?", "Answer": 290.0}, {"Body": "Unrelated", "Question": "How much?", "Answer": 1.0}]))
    data = folder(tmp_path, [FRESH[0], svamp_question.upper(), FRESH[1]])
    splits = load_splits(spec(data, against=["svamp"]), data_root=root, deduplicate=True)
    assert [e.question for e in splits.train] == FRESH[:2]
    assert splits.dedup["against"] == {"test": 3, "svamp": 2}
    assert splits.dedup["train"]["by_set"] == {"test": {"exact": 0, "near": 0}, "svamp": {"exact": 1, "near": 0}}


def test_an_unreadable_against_set_is_skipped_and_recorded_or_an_error(tmp_path, caplog):
    data = folder(tmp_path, [FRESH[0], EXACT])
    splits = load_splits(spec(data, against=["mawps_addsub"]), deduplicate=True)
    assert "mawps_addsub" in splits.dedup["skipped"] and "local only" in splits.dedup["skipped"]["mawps_addsub"]
    assert splits.dedup["against"] == {"test": 3} and splits.dedup["train"]["exact"] == 1
    assert "missing: dedup set mawps_addsub" in caplog.text
    with pytest.raises(DataError, match="dedup.against set 'mawps_addsub' cannot be read.*on_missing=skip"):
        load_splits(spec(data, against=["mawps_addsub"], on_missing="error"), deduplicate=True)


@pytest.mark.parametrize(("setting", "message"), [
    ({"against": ["gsm9k"]}, "dedup.against has 'gsm9k', which is not a dataset"),
    ({"against": "svamp"}, "dedup.against='svamp' must be a list"),
    ({"near_threshold": 0}, r"dedup.near_threshold=0 must be a number in \(0, 1\]"),
    ({"near_threshold": 1.5}, r"dedup.near_threshold=1.5 must be a number in \(0, 1\]"),
    ({"enabled": "yes"}, "dedup.enabled='yes' must be true or false"),
    ({"on_missing": "warn"}, "dedup.on_missing='warn' is not allowed; use one of skip, error"),
    ({"shingle": 3}, "dedup has unknown key.*shingle; allowed: enabled, against, near_threshold, on_missing"),
])
def test_bad_dedup_settings_name_the_value_and_what_is_allowed(tmp_path, setting, message):
    data = folder(tmp_path, FRESH[:3])
    with pytest.raises(DataError, match=message):
        load_splits({**spec(data), "dedup": setting})


# ---------------------------------------------------------------------------------------------- cells


def test_the_study_default_deduplicates_against_every_out_of_domain_set_of_the_paper():
    paper = OmegaConf.load(Path(__file__).resolve().parents[1] / "slm_sweep" / "conf" / "experiment" / "paper.yaml")
    for name in ("gsm8k", "orcamath"):
        assert list(dataset_spec(name).dedup.against) == list(paper.eval.ood_sets)
        assert dataset_spec(name).dedup.enabled


def keys(cfg):
    config = redact(OmegaConf.to_container(cfg, resolve=True))
    data = load_data(cfg)
    identity = identify(cfg, config, data)
    return identity.training_key, identity.evaluation_key, data


def test_what_training_sees_does_not_follow_eval_ood_sets(tiny_cfg):
    train_key, eval_key, data = keys(tiny_cfg("method=lora"))
    assert set(data.splits.dedup["against"]) == {"test", "svamp", "gsm_hard", "mawps_addsub", "mawps_singleeq",
                                                 "mawps_singleop", "multiarith", "validation"}
    scored_key, scored_eval, scored = keys(tiny_cfg("method=lora", "eval.ood_sets=[svamp,gsm_hard]"))
    assert scored.splits.train == data.splits.train and scored_key == train_key and scored_eval != eval_key
    zero = keys(tiny_cfg("method=zeroshot"))[2]
    assert zero.splits.dedup is None  # nothing is trained: nothing to deduplicate


def test_a_bad_dedup_setting_fails_when_the_config_is_validated():
    from slm_sweep.config import ConfigError, validate_config
    from tests.conftest import compose_config

    for override, message in (("dataset.dedup.against=[gsm9k]", "dedup.against has 'gsm9k'"),
                              ("dataset.dedup.near_threshold=2", r"dedup.near_threshold=2.0 must be a number in")):
        with pytest.raises(ConfigError, match=message):
            validate_config(compose_config(["model=tiny", "method=lora", override]))


def test_the_validation_split_keeps_its_size_and_repeats_are_replaced_from_training(requires_data):
    """GSM8K: 3 of the 500 validation questions repeat a MAWPS question; a learning-rate search still gets 500,
    the next candidates of the ranking, taken out of training. Training keeps no repeat of a validation question
    either (4 near ones in GSM8K train)."""
    from tests.conftest import DATA_ROOT

    plain = load_splits(dataset_spec("gsm8k"), data_root=DATA_ROOT)
    deduplicated = load_splits(dataset_spec("gsm8k"), data_root=DATA_ROOT, deduplicate=True)
    val, train = {e.question for e in deduplicated.val}, {e.question for e in deduplicated.train}
    assert len(deduplicated.val) == 500 and not val & train
    removed = deduplicated.dedup["val"]["removed"]
    assert removed > 0 and deduplicated.dedup["val"]["refilled"] == removed
    assert len(val - {e.question for e in plain.val}) == removed  # the rest of the slice is unchanged
    assert len(train) == len(plain.train) - removed - deduplicated.dedup["train"]["removed"]
    assert deduplicated.dedup["train"]["by_set"]["validation"]["near"] > 0
    assert not any(DedupIndex({"validation": sorted(val)}, 0.5).matches(sorted(train)))
