"""Dataset reading and split carving (slm_sweep.data): real files from ../shared/data, a small OrcaMath-format
fixture, and small broken files written per test. Never touches the network."""

import json
import logging
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

import slm_sweep.data.specs as specs
from slm_sweep.data import DataError, Example, dataset_spec, known_datasets, load_eval_set, load_splits
from slm_sweep.data.readers import asks_who, local_dir
from slm_sweep.data.specs import resolved_spec

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
ORCAMATH_FIXTURE = REPO / "tests" / "fixtures" / "orcamath"

needs_shared_data = pytest.mark.skipif(
    not (SHARED_DATA / "gsm8k" / "train.jsonl").is_file(), reason=f"real datasets not found at {SHARED_DATA}"
)

# the study's sets; a dataset file added to conf/dataset/ is checked by the same tests (known_datasets())
STUDY_DATASETS = ["gsm8k", "gsm_hard", "mawps_addsub", "mawps_singleeq", "mawps_singleop", "multiarith", "orcamath",
                  "svamp"]
ALL_DATASETS = known_datasets()


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def gsm_row(i: int, final: str | None = None) -> dict:
    return {
        "question": f"Question {i}: what is {i} + 1?",
        "answer": f"{i} + 1 = {i + 1}\n#### {final or i + 1}",
    }


def local_spec(data_dir: Path, **overrides) -> dict:
    """A gsm8k-like spec reading train.jsonl / test.jsonl from data_dir."""
    spec = {**dataset_spec("gsm8k"), "data_dir": str(data_dir), "val_size": 2}
    spec.update(overrides)
    return spec


@pytest.fixture
def small_dir(tmp_path: Path) -> Path:
    write_jsonl(tmp_path / "train.jsonl", [gsm_row(i) for i in range(10)])
    write_jsonl(tmp_path / "test.jsonl", [gsm_row(i) for i in range(100, 105)])
    return tmp_path


def questions(examples: list[Example]) -> set[str]:
    return {example.question for example in examples}


# ---------------------------------------------------------------------------------------------- the yaml specs


def test_every_dataset_yaml_has_the_same_keys_and_its_own_name():
    assert set(STUDY_DATASETS) <= set(ALL_DATASETS)
    expected_keys = {"name", *specs.DEFAULTS}
    for name in ALL_DATASETS:
        spec = dataset_spec(name)
        assert set(spec) == expected_keys, name
        assert spec.name == name
        specs.resolved_spec(spec)  # validates


def test_numeric_target_sets_are_eval_only_with_a_tolerance():
    for name in ["svamp", "gsm_hard", "mawps_addsub", "mawps_singleeq", "mawps_singleop", "multiarith"]:
        spec = dataset_spec(name)
        assert (
            spec.eval_only and spec.answer_format == "number" and spec.answer_tolerance == pytest.approx(1e-15)
        )
    assert not dataset_spec("gsm8k").eval_only and dataset_spec("gsm8k").answer_tolerance is None
    # OrcaMath's prose references are parsed to numbers, so they are compared as numbers
    assert not dataset_spec("orcamath").eval_only and dataset_spec("orcamath").answer_tolerance == pytest.approx(1e-15)


def test_unknown_dataset_name_lists_the_known_ones():
    with pytest.raises(DataError, match="unknown dataset 'gsm9k'") as err:
        dataset_spec("gsm9k")
    assert all(name in str(err.value) for name in ALL_DATASETS)


# ---------------------------------------------------------------------------------------------- real GSM8K


@needs_shared_data
def test_gsm8k_counts_and_first_reference():
    splits = load_splits(dataset_spec("gsm8k"), data_root=SHARED_DATA)
    assert len(splits.val) == 500
    assert len(splits.train) + len(splits.val) == 7473
    assert len(splits.test) == 1319
    assert splits.skipped == {"train": 0, "test": 0}
    uncarved = load_splits({**dataset_spec("gsm8k"), "val_size": None}, data_root=SHARED_DATA)
    assert len(uncarved.train) == 7473 and uncarved.val == []
    assert uncarved.train[0].question.startswith("Natalia sold clips")
    assert uncarved.train[0].reference == "72"
    assert uncarved.train[0].answer.endswith("#### 72")


@needs_shared_data
def test_gsm8k_carving_is_deterministic_whatever_the_global_seed_and_disjoint():
    random.seed(0)
    first = load_splits(dataset_spec("gsm8k"), data_root=SHARED_DATA)
    random.seed(99)
    second = load_splits(dataset_spec("gsm8k"), data_root=SHARED_DATA)
    assert first == second
    train, val, test = questions(first.train), questions(first.val), questions(first.test)
    assert not train & val
    assert not val & test
    assert len(train | val) == 7473


@needs_shared_data
def test_split_seed_changes_the_validation_slice():
    default = load_splits(dataset_spec("gsm8k"), data_root=SHARED_DATA)
    reseeded = load_splits({**dataset_spec("gsm8k"), "split_seed": 7}, data_root=SHARED_DATA)
    assert questions(default.val) != questions(reseeded.val)


@needs_shared_data
def test_train_limit_samples_the_whole_train_split_and_test_limit_keeps_the_first():
    full = load_splits(dataset_spec("gsm8k"), data_root=SHARED_DATA)
    limited = load_splits(
        {**dataset_spec("gsm8k"), "train_limit": 50, "test_limit": 7}, data_root=SHARED_DATA
    )
    position = {e.question: i for i, e in enumerate(full.train)}
    kept = [position[e.question] for e in limited.train]
    assert len(kept) == 50 and kept == sorted(kept)  # a selection of the train split, in source order
    # from the whole split, not its head (a file in topic or source order would bias the first N)
    assert min(kept) < 0.1 * len(full.train) and max(kept) > 0.9 * len(full.train)
    larger = load_splits({**dataset_spec("gsm8k"), "train_limit": 200}, data_root=SHARED_DATA)
    assert questions(limited.train) < questions(larger.train)  # a larger limit keeps what a smaller one kept
    assert limited.test == full.test[:7]
    assert limited.val == full.val


@needs_shared_data
def test_need_train_false_reads_only_the_test_split():
    splits = load_splits(dataset_spec("gsm8k"), data_root=SHARED_DATA, need_train=False)
    assert splits.train == [] and splits.val == []
    assert len(splits.test) == 1319
    assert splits.skipped == {"test": 0}


# ---------------------------------------------------------------------------------------------- real eval sets

EVAL_SETS = [
    # name, file, row count, first reference
    ("svamp", "svamp/SVAMP.json", 1000, "51"),
    ("gsm_hard", "gsm_hard/gsmhardv2.jsonl", 1319, "-9867630"),
    ("mawps_addsub", "mawps/mawpsaddsub.jsonl", 395, "43"),
    ("mawps_singleeq", "mawps/mawpssingleeq.jsonl", 508, "43"),
    ("mawps_singleop", "mawps/mawpssingleop.jsonl", 562, "14"),
    ("multiarith", "multiarith/mawpsmultiarith.jsonl", 600, "39"),
]


def raw_targets(relative: str) -> list:
    path = SHARED_DATA / relative
    if path.suffix == ".json":
        return [row["Answer"] for row in json.loads(path.read_text())]
    return [json.loads(line)["target"] for line in path.read_text().splitlines() if line.strip()]


@needs_shared_data
@pytest.mark.parametrize(("name", "relative", "count", "first_reference"), EVAL_SETS)
def test_eval_set_counts_and_references_match_the_numeric_target(name, relative, count, first_reference):
    examples = load_eval_set(name, data_root=SHARED_DATA)
    assert len(examples) == count
    assert examples[0].reference == first_reference
    targets = raw_targets(relative)
    assert len(targets) == count
    for example, target in zip(examples, targets, strict=True):
        assert float(example.reference) == pytest.approx(float(target), rel=1e-12)
        assert example.answer == example.reference


@needs_shared_data
def test_eval_set_loads_nothing_to_skip_and_honours_limit():
    assert load_splits(dataset_spec("svamp"), data_root=SHARED_DATA, need_train=False).skipped == {"test": 0}
    assert len(load_eval_set("multiarith", data_root=SHARED_DATA, limit=25)) == 25


@needs_shared_data
def test_svamp_question_joins_body_and_question():
    first = load_eval_set("svamp", data_root=SHARED_DATA, limit=3)
    assert first[0].question == (
        "Each pack of dvds costs 76 dollars. If there is a discount of 25 dollars on each pack. "
        "How much do you have to pay to buy each pack?"
    )
    assert first[2].question.startswith("Paco had 26 salty cookies and 17 sweet cookies. He ate")
    assert ".." not in first[2].question


@needs_shared_data
@pytest.mark.parametrize("name", ["svamp", "gsm_hard", "multiarith", "mawps_addsub"])
def test_eval_only_set_refuses_training(name):
    with pytest.raises(DataError, match=f"'{name}' is eval-only") as err:
        load_splits(dataset_spec(name), data_root=SHARED_DATA)
    assert "few-shot" in str(err.value) and "gsm8k" in str(err.value)


# ---------------------------------------------------------------------------------------------- OrcaMath fixture


def orcamath_spec(**overrides) -> dict:
    spec = {**dataset_spec("orcamath"), "data_dir": str(ORCAMATH_FIXTURE), "test_size": 10, "val_size": 5}
    spec.update(overrides)
    return spec


def test_orcamath_heldout_test_is_deterministic_sized_and_disjoint(caplog):
    with caplog.at_level(logging.WARNING):
        first = load_splits(orcamath_spec())
    second = load_splits(orcamath_spec())
    assert first == second
    assert len(first.test) == 10 and len(first.val) == 5 and len(first.train) == 25
    train, val, test = questions(first.train), questions(first.val), questions(first.test)
    assert not train & test and not val & test and not train & val
    assert len(train | val | test) == 40
    assert "train_limit=6954 exceeds the 25 examples" in caplog.text


def test_orcamath_heldout_test_does_not_depend_on_need_train_or_val_size():
    reference = load_splits(orcamath_spec()).test
    assert load_splits(orcamath_spec(), need_train=False).test == reference
    assert load_splits(orcamath_spec(val_size=12)).test == reference
    assert load_eval_set(orcamath_spec()) == reference


def test_orcamath_prose_answers_give_their_last_number():
    splits = load_splits(orcamath_spec(test_size=1, val_size=None))
    first = splits.train[0]
    assert "####" not in first.answer
    assert first.answer.endswith("Mia has 10 marbles left.")
    assert first.reference == "10"
    assert splits.skipped == {"train": 0}


def test_orcamath_prose_references_are_parsed_to_numbers():
    references = {ex.question: ex.reference for ex in load_eval_set(orcamath_spec(test_size=39))}
    assert references["What fraction of an hour is 45 minutes?"] == "0.75"  # \boxed{\frac{3}{4}}
    assert references["Felix buys 2 notebooks that cost $8.25 each. How much does Felix spend in total?"] == "16.5"
    assert references["A baker makes 5 dozen muffins and sells 38 of them. How many muffins are left?"] == "22"


def test_orcamath_unparsable_references_are_skipped_and_counted(tmp_path):
    rows = [
        {"question": "q1", "answer": "Therefore, the answer is 18."},
        {"question": "q2", "answer": "So, the train takes 5 hours and 30 minutes."},
        {"question": "q3", "answer": "There are 12 boys and 15 girls in the class."},
        {"question": "q4", "answer": "So, she has 3 1/2 pies left."},
    ]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    splits = load_splits({**dataset_spec("orcamath"), "data_dir": str(tmp_path), "test_size": 1, "val_size": None})
    assert sorted(ex.reference for ex in [*splits.train, *splits.test]) == ["18", "3.5"]
    assert splits.skipped == {"train": 2} and splits.skipped_asking_who == {}


def test_orcamath_gpt4_style_answers_give_their_final_answer():
    """Answers shaped as GPT-4 writes them: a markdown heading after the boxed answer, a closing check in several
    wordings, a rounding stated as such, markdown steps, a '#### 72' ending; questions asking who, for a name or
    for a category ("Which color has more balls?", "What is the name of the shape?", "In which box ...?", "Which
    one is the tallest?" after people's heights, "What is the color of ...?": the answer is no number, though the
    solution ends on one) and answers of two quantities or two results ("Jimin has 12 marbles, and Yoongi has 8
    marbles.", "the length of the rectangle is 12 cm, and its width is 8 cm", "..., and this year he is 13 years
    old") are left out."""
    spec = {**dataset_spec("orcamath"), "data_dir": str(REPO / "tests" / "fixtures" / "orcamath_hard"),
            "test_size": 8, "val_size": None}
    splits = load_splits(spec)
    references = {ex.question.split(".")[0].split("?")[0]: ex.reference for ex in [*splits.test, *splits.train]}
    assert references == {
        "Liam bought some stickers": "25",
        "A family spends $46 on groceries over 3 days": "≈15.33",
        "The total weight of 3 boxes is 8 kg": "≈2.67",
        "Some number multiplied by 3 equals 36": "12",
        "There are 84 students who want to sit in 7 rows equally": "12",
        "A rectangle has a length of 8 m and a width of 3 m": "24",
        "In a class of 40 students, 15 students are boys": "37.5",
        "Emma had 48 beads in April and half as many in May": "72",
        "A tank holds 1,250 liters": "500",
        # a third review: "which one" of the numbers listed asks for a number
        "The numbers 10, 11 and 12 are written on cards": "10",
    }
    assert splits.skipped == {"train": 15}
    # the other four: two quantities ("5 hours and 30 minutes") and two results (Jimin's and Yoongi's marbles; the
    # rectangle's length and "its width"; Jimin's age last year "and this year he is 13")
    assert splits.skipped_asking_who == {"train": 11}
    assert not any(ex.question.endswith(("Who has the fewest balls?", "Who is the tallest?", "tallest student?",
                                         "Which color has more balls?", "expensive per kilogram?",
                                         "How many marbles does Yoongi have?", "What is the width of the rectangle?",
                                         "What is the name of the shape?", "In which box are there more apples?",
                                         "How old is Jimin this year?", "Which one is the tallest?",
                                         "In which of the two boxes are there more apples?",
                                         "balls that are more numerous?", "What kind of fruit is more expensive?"))
                   for ex in [*splits.test, *splits.train])


def test_a_question_asking_who_is_named_as_such_when_rows_without_a_reference_are_errors(tmp_path):
    rows = [{"question": "Yuna has 3 apples and Eunji 5. Who has more?", "answer": "Eunji has 5 apples, so Eunji."},
            {"question": "q2", "answer": "Therefore, the answer is 18."}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    spec = {**dataset_spec("orcamath"), "data_dir": str(tmp_path), "test_size": 1, "val_size": None,
            "unparsable_answers": "error"}
    with pytest.raises(DataError, match="the question asks who, so its answer has no numeric reference: "
                                        "'Yuna has 3 apples"):
        load_splits(spec)


@pytest.mark.parametrize(("question", "asks"), [
    ("Jungkook has 5 and Jimin 2. Who has the smallest number?", True),
    ("Among A, B and C, who is the tallest?", True),
    ("Find out whose bag is heavier.", True),
    ("How many students who like math are there?", False),
    ("Tom, who is 5, has 3 apples. How many apples does he have?", False),
    ("How many apples does Tom, who is 5, have?", False),
    ("There are 5 students. How many students, who like math, are left?", False),
    ("Among Jimin, Yoongi and Jungkook who has the largest number?", True),
    ("Who has the most? Write the name.", True),
    ("Of those who signed up, how many attended?", False),
    ("Among the students who took the test, how many passed?", False),
    ("Between those who ran and those who walked, how many more ran?", False),
    ("Who knows? A class has 3 groups of 4. How many students are there?", False),
    ("A has 3 and B has 5, who then has more?", True),
    ("Which student read more books?", True),
    ("Who has read more books, and by how much?", False),
    ("Tell me who won.", True),
    # which of alternatives, or which team, box or bag: no number either
    ("There are 28 balls in box A and 31 in box B. Which box has more balls?", True),
    ("Which is heavier, bag A or bag B?", True),
    ("Which team scored more points, the Tigers or the Lions?", True),
    ("Which number is the largest among 3, 5 and 7?", False),
    ("Which is greater, 3/4 or 0.7?", False),
    ("Which one is the largest among 0.8, 1/2 and 0.9?", False),
    # a clause about a person inside a question that asks for a number
    ("If Jimin, who is 10, is 3 years older than Yuna, what is Yuna's age?", False),
    ("Among the students, who scored 90 or more, what is the average score?", False),
    ("What is the average score of Taehyung, whose score is 85, and Jimin?", False),
    # questions that want a name, worded without "who"
    ("Jungkook has 6, Yoongi has 4. Find the person who has the smallest number.", True),
    ("Jungkook has 6, Yoongi has 4. What is the name of the person with the larger number?", True),
    ("Yuna scored 90 and Minji 85. Which of the two scored higher?", True),
    ("Which of the two is greater, 3/4 or 0.7?", False),
    # a name after words that describe the person, or which thing that is no number (a color, a fruit): no number
    ("Yuna is 150 cm, Jimin is 145 cm and Yoongi is 148 cm tall. What is the name of the tallest student?", True),
    ("There are 3 red and 4 blue balls in a box. Which color has more balls?", True),
    ("A shop sells apples for $2 and pears for $3. Which fruit is more expensive?", True),
    ("Pears cost $3 a kilogram and apples $2. Which fruit costs more?", True),
    ("Red got 12 votes, blue 15 and green 9. Among red, blue and green, which color got the most votes?", True),
    # which number, year or value: a number
    ("Which number is larger, 3 or 5?", False),
    ("The cards show 3, 5 and 7. Which number is the largest?", False),
    ("The cards show 4, 7 and 2. Which two-digit number is the smallest you can make with two of them?", False),
    ("Jimin wrote 12, 15 and 9. Which is the largest?", False),
    ("It rained 30 mm in 2020 and 45 mm in 2021. Which year had more rain?", False),
    ("If the names of the 3 tallest students are written twice, what is the number of names written?", False),
    # a second review: the name of a thing or after an ordinal, "what color/fruit", "in which box"
    ("A polygon has 4 sides and 4 right angles. What is the name of the shape?", True),
    ("What is the name of the polygon with six sides?", True),
    ("Yuna is 150 cm, Jimin is 145 cm and Yoongi is 148 cm tall. What is the name of the 2nd tallest student?", True),
    ("There are 3 red and 4 blue balls in a box. What color has more balls?", True),
    ("Box A holds 12 apples and box B holds 15 apples. In which box are there more apples?", True),
    ("A kilogram of apples costs $3 and a kilogram of pears costs $4. What fruit is more expensive?", True),
    ("Jimin has 5 apples and Yuna has 7 apples. Among them, which one has more?", True),
    # ... but not the name of a number, which year, which qualified number, nor "which one" of numbers listed
    ("There are 0.8, 1/2 and 0.9. What is the name of the largest number among them?", False),
    ("What number is the largest?", False),
    ("It rained 30 mm in 2020 and 45 mm in 2021. In which year was there more rain?", False),
    ("For which value of x is 3x + 2 equal to twenty?", False),
    ("Which smallest natural number must be added to make it divisible by seven?", False),
    ("There are four numbers 0.8, 1/2, 0.9, and 1/3. Among them, which one is the largest?", False),
    ("The numbers 10, 11 and 12 are written on cards. Which one is the smallest?", False),
    ("What is the number of letters in the name of the city?", False),
    # a third review: "which one" after a list of people's or things' numbers asks for a name; "in which of the two",
    # "what is the color of", "what kind of" ask for a thing; not "which of the two numbers/years"
    ("The heights of Yuna, Jimin and Yoongi are 150, 145 and 148 cm. Which one is the tallest?", True),
    ("Seokjin, Jimin and Yoongi weigh 45, 41 and 43 kilograms respectively. Which one is the heaviest?", True),
    ("Students A, B and C scored 80, 90 and 85 points. Which one got the highest score?", True),
    ("There are 3 students, Yuna, Jimin and Yoongi, whose heights are 150, 145 and 148 cm. Which one is the tallest?",
     True),
    ("The lengths of the pencil, the pen and the crayon are 15, 12 and 9 cm. Which one is the longest?", True),
    ("There are 0.8, 1/2, 0.9 and 1/3. Among them, which one is the largest?", False),
    ("There are 5 boxes with 3, 7, 2, 9 and 4 apples. Which one holds the most apples?", False),
    ("Box A holds 12 apples and box B holds 15 apples. In which of the two boxes are there more apples?", True),
    ("There are 13 red balls and 17 blue balls. What is the color of the balls that are more numerous?", True),
    ("Apples cost $3 per kg and pears cost $4 per kg. What kind of fruit is more expensive?", True),
    ("It rained 30 mm in 2020 and 45 mm in 2021. In which of the two years was there more rain?", False),
    ("The numbers are 12 and 15. Which of the two numbers is larger?", False),
    ("What is the color of the 3rd ball?", False),
    ("What kind of number is 7?", False),
])
def test_asks_who(question, asks):
    assert asks_who(question) is asks


@needs_shared_data
def test_orcamath_trains_on_as_many_examples_as_a_gsm8k_cell():
    """The two study datasets are size-matched: OrcaMath's train_limit (counted after deduplication) is the number
    of examples a GSM8K cell keeps after its validation split and deduplication."""
    gsm8k = load_splits(dataset_spec("gsm8k"), data_root=SHARED_DATA, deduplicate=True)
    assert dataset_spec("orcamath")["train_limit"] == len(gsm8k.train)


def test_orcamath_train_limit_applies_after_carving():
    splits = load_splits(orcamath_spec(train_limit=4))
    unlimited = load_splits(orcamath_spec(train_limit=None))
    assert len(splits.train) == 4 and questions(splits.train) < questions(unlimited.train)
    assert splits.test == unlimited.test and splits.val == unlimited.val


def test_a_row_left_out_moves_no_other_row_between_parts(tmp_path):
    """A row that becomes unparsable (a parser change, an edited hub row) must not reshuffle the held-out test
    set: with a shuffled permutation about three quarters of it changed."""
    rows = [{"question": f"Problem {i}: how many apples?", "answer": f"So, the answer is {i}."} for i in range(300)]
    spec = {**dataset_spec("orcamath"), "test_size": 60, "val_size": 30, "train_limit": 100}
    before = load_splits({**spec, "data_dir": str(write_jsonl(tmp_path / "a" / "train.jsonl", rows).parent)})
    for victim in (before.test[0], before.train[0]):
        edited = [dict(r, answer="There are 12 boys and 15 girls.") if r["question"] == victim.question else r
                  for r in rows]
        after = load_splits({**spec, "data_dir": str(write_jsonl(tmp_path / "b" / "train.jsonl", edited).parent)})
        assert after.skipped == {"train": 1}
        for part in ("test", "val", "train"):
            old, new = questions(getattr(before, part)), questions(getattr(after, part))
            assert len(old - new) <= 1 and len(new - old) <= 1, part


def test_a_limited_heldout_test_set_does_not_depend_on_the_file_s_row_order(tmp_path):
    """test_limit on a held-out test set takes the first N of the carving's ranking: the file's order (hub rows
    grouped by kind) neither changes nor skews the slice; training still excludes the whole held-out set."""
    rows = [{"question": f"Problem {i % 250}: how many apples?", "answer": f"So, the answer is {i}."}
            for i in range(300)]  # 50 questions twice, as the hub's rows repeat some
    spec = {**dataset_spec("orcamath"), "test_size": 60, "val_size": 30, "test_limit": 10}
    forward = load_splits({**spec, "data_dir": str(write_jsonl(tmp_path / "a" / "train.jsonl", rows).parent)})
    first_ten = load_splits({**spec, "test_size": 10, "test_limit": None,
                             "data_dir": str(write_jsonl(tmp_path / "d" / "train.jsonl", rows).parent)})
    assert forward.test == first_ten.test  # the ranking's first 10, repeats and all
    backward = load_splits({**spec, "data_dir": str(write_jsonl(tmp_path / "b" / "train.jsonl", rows[::-1]).parent)})
    whole = load_splits({**spec, "test_limit": None,
                         "data_dir": str(write_jsonl(tmp_path / "c" / "train.jsonl", rows).parent)})
    assert len(forward.test) == 10 and questions(forward.test) == questions(backward.test)
    assert questions(forward.test) < questions(whole.test)
    assert forward.train == whole.train and not {(e.question, e.answer) for e in whole.test} & {
        (e.question, e.answer) for e in forward.train}


@pytest.mark.parametrize("dedup", [pytest.param(None, id="no-dedup"), pytest.param(False, id="dedup-off")])
def test_copies_of_a_held_out_question_never_train_or_validate_whatever_the_deduplication(tmp_path, caplog, dedup):
    """Each question of the file twice: the copies follow each other in the ranking, so a copy is split from its
    question only at a part's boundary, and one past the held-out test set's boundary is left out."""
    rows = [json.loads(line) for line in (ORCAMATH_FIXTURE / "train.jsonl").read_text().splitlines()]
    folder = write_jsonl(tmp_path / "twice" / "train.jsonl", rows + rows).parent
    spec = orcamath_spec(data_dir=str(folder), dedup=None if dedup is None else {"enabled": False, "against": []})
    for test_size in range(5, 15):
        with caplog.at_level(logging.WARNING):
            splits = load_splits({**spec, "test_size": test_size}, deduplicate=True)
        test, val, train = questions(splits.test), questions(splits.val), questions(splits.train)
        assert not test & train and not test & val, test_size
        assert len(val & train) <= 1  # at most the question at validation's boundary
        assert len(splits.val) == 5  # refilled from the ranking after a copy left it
        assert len(splits.test) == test_size and 2 * len(test) - len(splits.test) in (0, 1)
    assert "copies of held-out test questions from validation and training" in caplog.text


def test_heldout_test_size_must_leave_train_examples():
    with pytest.raises(DataError, match="test_size=40 must be smaller than the 40"):
        load_splits(orcamath_spec(test_size=40))
    with pytest.raises(DataError, match="val_size=30 must be smaller than the 30"):
        load_splits(orcamath_spec(val_size=30))


# ---------------------------------------------------------------------------------------------- sources


def test_missing_data_dir_names_the_key_and_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="does not exist") as err:
        load_splits(local_spec(missing))
    assert f"dataset.data_dir={missing}" in str(err.value)


def test_a_set_absent_from_data_root_comes_from_the_hub_when_it_has_a_hub_id(tmp_path, monkeypatch):
    """data_root holds the sets that are local: OrcaMath, absent from it, is read from the hub (its folder, once
    there, is read instead); a local-only set absent from it is an error naming the folder."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    orcamath = resolved_spec(dataset_spec("orcamath"))
    assert local_dir(orcamath, tmp_path) is None
    with pytest.raises(DataError, match="could not be loaded from the Hugging Face hub") as err:
        load_eval_set("orcamath", data_root=tmp_path)
    assert "does not exist" not in str(err.value)
    # without the datasets library (the GPU machine has none) it is the same data problem, which a dedup set
    # missing under dataset.dedup.on_missing=skip is allowed to be
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError, match="could not be loaded from the Hugging Face hub.*ModuleNotFoundError"):
        load_eval_set("orcamath", data_root=tmp_path)
    monkeypatch.delitem(sys.modules, "datasets")
    (tmp_path / "orcamath").symlink_to(ORCAMATH_FIXTURE)
    assert local_dir(orcamath, tmp_path) == tmp_path / "orcamath"
    assert len(load_splits({**orcamath, "test_size": 5, "val_size": 5}, data_root=tmp_path).test) == 5
    with pytest.raises(DataError, match="does not exist") as err:
        load_eval_set("multiarith", data_root=tmp_path)
    assert str(tmp_path / "multiarith") in str(err.value) and "data_root" in str(err.value)
    # a data_root that does not exist at all is a mistake, not a reason to read every set from the hub
    with pytest.raises(DataError, match=f"dataset folder {tmp_path / 'typo'} \\(from data_root=") as err:
        load_eval_set("gsm8k", data_root=tmp_path / "typo")


def test_data_dir_wins_over_data_root(small_dir, tmp_path_factory):
    other_root = tmp_path_factory.mktemp("empty_root")
    splits = load_splits(local_spec(small_dir), data_root=other_root)
    assert len(splits.test) == 5


def test_missing_file_lists_what_is_there(tmp_path):
    write_jsonl(tmp_path / "test.jsonl", [gsm_row(1)])
    write_jsonl(tmp_path / "other.jsonl", [gsm_row(1)])
    with pytest.raises(DataError, match="expected train file train.jsonl") as err:
        load_splits(local_spec(tmp_path))
    assert "found: other.jsonl, test.jsonl" in str(err.value)


def test_unsupported_file_suffix(tmp_path):
    (tmp_path / "test.csv").write_text("question,answer\n")
    spec = local_spec(tmp_path, local={"dir_name": "x", "files": {"test": "test.csv"}})
    with pytest.raises(DataError, match=r"test\.csv: can't read \.csv files"):
        load_splits(spec, need_train=False)


def test_malformed_jsonl_line_names_file_and_line(small_dir):
    lines = (small_dir / "test.jsonl").read_text().splitlines()
    lines[2] = '{"question": "broken", "answer": '
    (small_dir / "test.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"test\.jsonl: line 3 is not valid JSON \(Expecting value at column 34\)"):
        load_splits(local_spec(small_dir))
    lines[2] = '{"question": "broken'
    (small_dir / "test.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"line 3 is not valid JSON \(Unterminated string starting at column 14\)"):
        load_splits(local_spec(small_dir))


def test_jsonl_line_that_is_not_an_object(small_dir):
    (small_dir / "test.jsonl").write_text(json.dumps(gsm_row(1)) + "\n[1, 2]\n")
    with pytest.raises(DataError, match=r"test\.jsonl line 2: expected a JSON object"):
        load_splits(local_spec(small_dir))


def test_blank_lines_and_missing_trailing_newline_are_fine(small_dir):
    rows = [json.dumps(gsm_row(i)) for i in range(3)]
    (small_dir / "test.jsonl").write_text(rows[0] + "\n\n" + rows[1] + "\n" + rows[2])
    assert len(load_splits(local_spec(small_dir)).test) == 3


def test_a_line_separator_inside_a_json_string_stays_in_its_row(small_dir):
    """JSON strings may hold U+2028, U+2029 and U+0085 unescaped (a file written with ensure_ascii=False); only
    a newline ends a row. Windows line ends are fine too."""
    rows = [gsm_row(i) for i in range(3)]
    rows[1]["question"] = "Line one\u2028line two\u2029and\u0085three"
    (small_dir / "test.jsonl").write_text("\r\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\r\n",
                                          encoding="utf-8")
    test = load_splits(local_spec(small_dir)).test
    assert [ex.question for ex in test] == [r["question"] for r in rows]


def test_invalid_json_file_names_path_and_position(tmp_path):
    (tmp_path / "set.json").write_text('[\n  {"Body": "a", "Question": "b?", "Answer": 1.0},\n  {"Body": \n]')
    spec = {**dataset_spec("svamp"), "data_dir": str(tmp_path), "local": {"files": {"test": "set.json"}}}
    with pytest.raises(DataError, match=r"set\.json is not valid JSON: .* at line 4, column 1"):
        load_eval_set(spec)


def test_json_file_that_is_not_an_array(tmp_path):
    (tmp_path / "set.json").write_text('{"Body": "a", "Question": "b?", "Answer": 1.0}')
    spec = {**dataset_spec("svamp"), "data_dir": str(tmp_path), "local": {"files": {"test": "set.json"}}}
    with pytest.raises(DataError, match=r"set\.json: expected a JSON array of row objects, got a JSON dict"):
        load_eval_set(spec)


def test_empty_file_is_an_error(small_dir):
    (small_dir / "test.jsonl").write_text("\n")
    with pytest.raises(DataError, match=r"test\.jsonl has no rows"):
        load_splits(local_spec(small_dir))


# ---------------------------------------------------------------------------------------------- rows


def test_row_missing_question_names_file_line_field_and_fields_present(small_dir):
    rows = [gsm_row(1), {"prompt": "x", "answer": "#### 3"}]
    write_jsonl(small_dir / "test.jsonl", rows)
    with pytest.raises(
        DataError, match=r"test\.jsonl line 2: missing field 'question'; fields present: answer, prompt"
    ):
        load_splits(local_spec(small_dir))


def test_row_missing_or_null_answer_field(small_dir):
    write_jsonl(
        small_dir / "train.jsonl", [gsm_row(i) for i in range(5)] + [{"question": "q?", "solution": "4"}]
    )
    with pytest.raises(
        DataError, match=r"train\.jsonl line 6: missing field 'answer'; fields present: question, solution"
    ):
        load_splits(local_spec(small_dir))
    write_jsonl(
        small_dir / "train.jsonl", [gsm_row(i) for i in range(5)] + [{"question": "q?", "answer": None}]
    )
    with pytest.raises(
        DataError, match=r"train\.jsonl line 6: field 'answer' is null; fields present: answer, question"
    ):
        load_splits(local_spec(small_dir))


def test_json_row_missing_field_names_the_row(tmp_path):
    rows = [{"Body": "a", "Question": "b?", "Answer": 1.0}, {"Body": "a", "Answer": 2.0}]
    (tmp_path / "set.json").write_text(json.dumps(rows))
    spec = {**dataset_spec("svamp"), "data_dir": str(tmp_path), "local": {"files": {"test": "set.json"}}}
    with pytest.raises(
        DataError, match=r"set\.json row 2: missing field 'Question'; fields present: Answer, Body"
    ):
        load_eval_set(spec)


def test_question_field_must_be_text(small_dir):
    write_jsonl(small_dir / "test.jsonl", [{"question": 12, "answer": "#### 3"}])
    with pytest.raises(DataError, match=r"test\.jsonl line 1: field 'question' must be text, got int"):
        load_splits(local_spec(small_dir))


def test_unparsable_answers_are_skipped_and_counted(small_dir):
    rows = [
        gsm_row(1),
        {"question": "q?", "answer": "no marker 5"},
        {"question": "r?", "answer": "#### none"},
    ]
    write_jsonl(small_dir / "test.jsonl", rows)
    splits = load_splits(local_spec(small_dir))
    assert [example.reference for example in splits.test] == ["2"]
    assert splits.skipped == {"test": 2, "train": 0}


def test_unparsable_answer_with_error_policy_names_file_and_line(small_dir):
    write_jsonl(small_dir / "test.jsonl", [gsm_row(1), {"question": "q?", "answer": "the answer is five"}])
    with pytest.raises(DataError, match=r"test\.jsonl line 2: no parsable final number in field 'answer'"):
        load_splits(local_spec(small_dir, unparsable_answers="error"))


def test_number_format_accepts_numeric_strings_and_rejects_text(tmp_path):
    rows = [
        {"input": "a?", "target": "1,250"},
        {"input": "b?", "target": 2.5},
        {"input": "c?", "target": "n/a"},
    ]
    write_jsonl(tmp_path / "set.jsonl", rows)
    spec = {
        **dataset_spec("multiarith"),
        "data_dir": str(tmp_path),
        "local": {"files": {"test": "set.jsonl"}},
    }
    splits = load_splits(spec, need_train=False)
    assert [example.reference for example in splits.test] == ["1250", "2.5"]
    assert splits.skipped == {"test": 1}


def test_all_rows_unparsable_is_an_error(small_dir):
    write_jsonl(small_dir / "test.jsonl", [{"question": "q?", "answer": "nothing"}])
    with pytest.raises(DataError, match=r"none of the 1 test rows \(from .*test\.jsonl line 1\)"):
        load_splits(local_spec(small_dir))


# ---------------------------------------------------------------------------------------------- spec values


@pytest.mark.parametrize("key", ["val_size", "train_limit", "test_limit"])
@pytest.mark.parametrize("value", [0, -3, 2.5, True, "10"])
def test_sizes_must_be_positive_integers(small_dir, key, value):
    with pytest.raises(DataError, match=f"{key}={value!r} must be a positive integer or null"):
        load_splits(local_spec(small_dir, **{key: value}))


@pytest.mark.parametrize("value", [0, -1])
def test_heldout_test_size_must_be_a_positive_integer(value):
    with pytest.raises(DataError, match=f"test_size={value} must be a positive integer or null"):
        load_splits(orcamath_spec(test_size=value))


def test_eval_set_limit_must_be_a_positive_integer():
    with pytest.raises(DataError, match="limit=0 must be a positive integer"):
        load_eval_set("svamp", limit=0)


def test_val_size_must_be_smaller_than_train(small_dir):
    with pytest.raises(DataError, match="val_size=10 must be smaller than the 10 train examples"):
        load_splits(local_spec(small_dir, val_size=10))


def test_heldout_needs_test_size_and_test_size_needs_heldout(small_dir):
    with pytest.raises(DataError, match="test_split: heldout needs test_size"):
        load_splits(orcamath_spec(test_size=None))
    with pytest.raises(DataError, match="test_size=3 applies only with test_split: heldout; .* test_limit"):
        load_splits(local_spec(small_dir, test_size=3))


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("answer_format", "latex", "gsm8k, prose, number"),
        ("test_split", "validation", "test, heldout"),
        ("unparsable_answers", "ignore", "skip, error"),
    ],
)
def test_choices_name_the_bad_value_and_the_allowed_ones(small_dir, key, value, allowed):
    with pytest.raises(DataError, match=f"{key}='{value}' is not allowed; use one of {allowed}"):
        load_splits(local_spec(small_dir, **{key: value}))


@pytest.mark.parametrize(("source", "role"), [("local", "validation"), ("local", "tset"), ("hub", "validation")])
def test_a_split_role_nothing_reads_is_refused_naming_the_roles(small_dir, source, role):
    """A ``validation`` file would never be read (the validation split is carved from train), and a misspelt
    ``tset`` would leave the test split to fall back to test.jsonl."""
    key = "files" if source == "local" else "splits"
    block = {**dataset_spec("gsm8k")[source], key: {"train": "train.jsonl", role: "x.jsonl"}}
    with pytest.raises(DataError) as err:
        resolved_spec(local_spec(small_dir, **{source: block}))
    assert (f"dataset 'gsm8k': {source}.{key} has the role {role!r}, which nothing reads; the roles are: train, "
            "test (the validation split is carved from train: val_size, split_seed)") in str(err.value)
    for name in ALL_DATASETS:  # the package's sets name only roles that are read
        resolved_spec(dataset_spec(name))


@pytest.mark.parametrize("value", [-0.1, "tight", float("inf")])
def test_answer_tolerance_must_be_a_non_negative_number(small_dir, value):
    with pytest.raises(DataError, match="answer_tolerance="):
        load_splits(local_spec(small_dir, answer_tolerance=value))


def test_spec_must_be_a_mapping():
    with pytest.raises(DataError, match="must be a mapping"):
        load_splits(["gsm8k"])


# ---------------------------------------------------------------------------------------------- hub


class FakeHub:
    """Stands in for datasets.load_dataset: records calls, serves given splits as the datasets.Dataset the hub
    gives (iterated by rows, sliced by columns) or fails like an offline hub."""

    def __init__(self, splits: dict[str, list[dict]] | None = None):
        import datasets

        self.splits = None if splits is None else {
            name: datasets.Dataset.from_list(rows) for name, rows in splits.items()}
        self.calls = []

    def __call__(self, path, name=None, split=None, revision=None):
        self.calls.append((path, name, split))
        if self.splits is None:
            raise ConnectionError("Couldn't reach the Hugging Face Hub (offline mode is enabled)")
        return self.splits[split]


def test_hub_is_used_when_no_local_folder_is_given(monkeypatch, small_dir):
    import datasets

    fake = FakeHub()
    monkeypatch.setattr(datasets, "load_dataset", fake)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match="could not be loaded from the Hugging Face hub") as err:
        load_splits(dataset_spec("gsm8k"))
    assert fake.calls == [("openai/gsm8k", "main", "test")]
    message = str(err.value)
    assert "openai/gsm8k" in message and "offline" in message
    assert "dataset.data_dir=" in message and "data_root=" in message


def test_hub_splits_listed_for_a_role_are_concatenated(monkeypatch):
    import datasets

    def svamp_rows(count, start):
        return [
            {"Body": f"Body {i}", "Question": "How many?", "Answer": float(i)}
            for i in range(start, start + count)
        ]

    fake = FakeHub({"train": svamp_rows(7, 0), "test": svamp_rows(3, 7)})
    monkeypatch.setattr(datasets, "load_dataset", fake)
    examples = load_eval_set("svamp")
    assert [call[2] for call in fake.calls] == ["train", "test"]
    assert [example.reference for example in examples] == [str(i) for i in range(10)]
    assert examples[0].question == "Body 0. How many?"


def test_hub_heldout_reads_the_train_split(monkeypatch):
    import datasets

    rows = [{"question": f"q{i}?", "answer": f"So the answer is {i}."} for i in range(30)]
    fake = FakeHub({"train": rows})
    monkeypatch.setattr(datasets, "load_dataset", fake)
    splits = load_splits({**dataset_spec("orcamath"), "test_size": 5, "val_size": 5, "train_limit": None})
    assert fake.calls == [("microsoft/orca-math-word-problems-200k", None, "train")]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (20, 5, 5)


def test_hub_without_the_needed_split_says_so(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", FakeHub({"train": []}))
    with pytest.raises(DataError, match="hub.splits has no 'test' entry"):
        load_splits({**dataset_spec("orcamath"), "test_split": "test", "test_size": None})


def test_local_only_dataset_without_a_folder_says_how_to_point_at_files():
    # read as the cell's dataset: its own folder (dataset.data_dir) or the data root
    with pytest.raises(DataError, match="'mawps_addsub' is local only") as err:
        load_splits(dataset_spec("mawps_addsub"), need_train=False)
    assert "dataset.data_dir=<folder holding mawpsaddsub.jsonl> or data_root=<folder holding mawps/>" in str(err.value)
    # read as an out-of-domain or dedup set: dataset.data_dir names the training set's folder, so only data_root
    with pytest.raises(DataError, match="'mawps_addsub' is local only") as err:
        load_eval_set("mawps_addsub")
    assert str(err.value).endswith(": set data_root=<folder holding mawps/>") and "data_dir" not in str(err.value)


def test_real_load_dataset_offline_fails_with_the_hub_id(tmp_path):
    """The unpatched hub path with the HF offline switches on and an empty cache, in a fresh interpreter."""
    script = (
        "from slm_sweep.data import DataError, dataset_spec, load_splits\n"
        "try:\n"
        "    load_splits(dataset_spec('gsm8k'), need_train=False)\n"
        "except DataError as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    raise SystemExit('loaded from the hub although offline')\n"
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "HF_DATASETS_CACHE": str(tmp_path / "hf" / "datasets"),
    }
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "openai/gsm8k" in result.stdout and "offline" in result.stdout
