"""Batched greedy generation: encoding, stop handling, and the engines agreeing token for token."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from slm_sweep.data import dataset_spec, load_splits
from slm_sweep.evaluate.batching import context_window, encode_prompts, slot_count, token_budget_batches
from slm_sweep.evaluate.evaluator import evaluate
from slm_sweep.evaluate.generate import ENGINES, generate
from slm_sweep.evaluate.stopping import StopCheck, to_generation
from slm_sweep.models import load_model_and_tokenizer
from tests.conftest import CONF_DIR, DATA_ROOT, OutOfMemoryAbove

GSM8K_STOP = ["Question:", "</s>", "<|im_end|>"]
# Strings that the untied tiny model below writes at different points, so its rows end at different steps.
VARIED_STOP = [*GSM8K_STOP, "than", ">>", "weeks"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny():
    return load_model_and_tokenizer(OmegaConf.load(CONF_DIR / "model" / "tiny.yaml"))


@pytest.fixture(scope="module")
def varied_tiny():
    """The tiny model with an untied random output layer: a tied random model repeats its last token forever,
    this one writes varied text, so rows end at different steps and by different stop strings."""
    model, tokenizer = _tiny()
    generator = torch.Generator().manual_seed(0)
    model.config.tie_word_embeddings = False  # else lm-eval's HFLM ties the layers again
    model.lm_head.weight = torch.nn.Parameter(torch.randn(model.lm_head.weight.shape, generator=generator))
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def zero_shot_prompts():
    if not (DATA_ROOT / "gsm8k" / "test.jsonl").is_file():
        pytest.skip(f"the GSM8K files are not at {DATA_ROOT}")
    test = load_splits(dataset_spec("gsm8k"), data_root=DATA_ROOT, need_train=False).test[:16]
    return [f"Question: {ex.question}\nAnswer:" for ex in test]


@pytest.fixture(scope="module")
def many_prompts():
    """40 prompts of 10 to 180 tokens in no particular order: more than a few slots hold, so slots are refilled."""
    if not (DATA_ROOT / "gsm8k" / "test.jsonl").is_file():
        pytest.skip(f"the GSM8K files are not at {DATA_ROOT}")
    test = load_splits(dataset_spec("gsm8k"), data_root=DATA_ROOT, need_train=False).test[:40]
    return [f"Question: {ex.question}\nAnswer:"[-(20 + 37 * i % 300):] for i, ex in enumerate(test)]


# ---------------------------------------------------------------------------------------------- batching


def test_token_budget_batches_sorts_longest_first_and_respects_both_limits():
    lengths = [5, 50, 20, 40, 10, 30]
    batches = list(token_budget_batches(lengths, max_new_tokens=10, token_budget=130, max_batch_size=3))
    assert sorted(i for b in batches for i in b) == list(range(6))
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(lengths, reverse=True)
    for batch in batches:
        assert len(batch) <= 3
        assert len(batch) == 1 or len(batch) * (lengths[batch[0]] + 10) <= 130


def test_slot_count_is_the_first_token_budget_batch():
    lengths = [5, 50, 20, 40, 10, 30]
    first = next(token_budget_batches(lengths, max_new_tokens=10, token_budget=130, max_batch_size=3))
    assert slot_count(50, 10, token_budget=130, max_batch_size=3, prompts=6) == len(first) == 2
    assert slot_count(50, 10, token_budget=10_000, max_batch_size=3, prompts=6) == 3
    assert slot_count(50, 10, token_budget=10_000, max_batch_size=64, prompts=6) == 6
    assert slot_count(50, 10, token_budget=1, max_batch_size=64, prompts=6) == 1


# ---------------------------------------------------------------------------------------------- encoding


def test_prompts_are_left_truncated_to_the_window():
    _, tokenizer = _tiny()
    text = "Question: how many apples did she buy? Answer: 12 apples. " * 20
    full = tokenizer(text)["input_ids"]
    (ids,) = encode_prompts(tokenizer, [text], max_prompt_tokens=30)
    assert ids == full[-30:]
    with pytest.raises(ValueError, match="no room for a prompt"):
        encode_prompts(tokenizer, [text], max_prompt_tokens=0)


def test_new_tokens_that_fill_the_context_window_are_refused_naming_the_setting_and_the_window():
    model, tokenizer = _tiny()
    window = context_window(model, tokenizer)
    with pytest.raises(ValueError, match=f"eval.max_new_tokens={window} leaves no room for a prompt in the model's "
                                         f"context window of {window} tokens: use at most {window - 1}"):
        generate(model, tokenizer, ["How many?"], max_new_tokens=window)


def test_bos_is_added_as_the_tokenizer_does_unless_the_prompt_starts_with_it():
    from tokenizers import processors

    _, tokenizer = _tiny()
    bos, bos_id = tokenizer.bos_token, tokenizer.bos_token_id
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, bos_id)])
    plain, templated = encode_prompts(tokenizer, ["how many", f"{bos}how many"], max_prompt_tokens=100)
    assert plain[0] == bos_id and plain[1] != bos_id
    assert templated[0] == bos_id and templated[1] != bos_id


def test_context_window_comes_from_the_model_config():
    model, tokenizer = _tiny()
    assert context_window(model, tokenizer) == model.config.max_position_embeddings == 2048


# ---------------------------------------------------------------------------------------------- stopping


def test_stop_string_ends_a_sequence_whatever_its_tokenization():
    _, tokenizer = _tiny()
    check = StopCheck(tokenizer, GSM8K_STOP, eos_ids={tokenizer.eos_token_id})
    whole = tokenizer("so 12.\n\nQuestion:", add_special_tokens=False)["input_ids"]
    by_char = [i for ch in "so 12.\n\nQuestion:" for i in tokenizer(ch, add_special_tokens=False)["input_ids"]]
    assert len(by_char) > len(whole)
    for ids in (whole, by_char):
        assert check.finished(ids)
        assert not any(check.finished(ids[:n]) for n in range(1, len(ids)))


@pytest.mark.parametrize("stop", ["答案：", "答案", "。", "€5"])
def test_a_stop_string_of_characters_several_tokens_long_ends_where_its_text_appears(stop):
    """A byte-level tokenizer spends several tokens on one character (the tiny one: one per byte), and a token
    holding part of one decodes alone to U+FFFD: the continuation ends at the first token whose text holds the stop
    string, as lm-eval's stopping criterion ends it."""
    _, tokenizer = _tiny()
    ids = tokenizer("计算。答案：18。后面还有€5很多文字", add_special_tokens=False)["input_ids"]
    assert len(ids) > len("计算。答案：18。后面还有€5很多文字")
    check = StopCheck(tokenizer, [stop], eos_ids=set())
    expected = next(n for n in range(1, len(ids) + 1) if stop in tokenizer.decode(ids[:n]))
    assert next(n for n in range(1, len(ids) + 1) if check.finished(ids[:n])) == expected


def test_end_of_sequence_and_special_token_stops():
    _, tokenizer = _tiny()
    words = tokenizer("so 12", add_special_tokens=False)["input_ids"]
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert StopCheck(tokenizer, [], eos_ids={im_end}).finished([*words, im_end])
    assert not StopCheck(tokenizer, [], eos_ids=set()).finished([*words, im_end])
    # as lm-eval's stopping criterion, stop strings are searched with special tokens decoded
    assert StopCheck(tokenizer, ["<|im_end|>"], eos_ids=set()).finished([*words, im_end])


def test_a_generation_ends_where_training_ends_an_answer_whatever_the_generation_config_names():
    """Plain-style training ends an answer with the tokenizer's EOS, chat-style with the template's end-of-turn
    token: both end a generation even when the model's generation config names neither (or another id)."""
    import copy

    from slm_sweep.evaluate.stopping import eos_token_ids

    model, tokenizer = _tiny()
    tokenizer = copy.deepcopy(tokenizer)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    tokenizer.add_special_tokens({"eos_token": "<|endoftext|>"})
    eos = tokenizer.eos_token_id
    assert eos != im_end
    model.generation_config.eos_token_id = None
    assert eos_token_ids(model, tokenizer) == {eos, im_end}
    model.generation_config.eos_token_id = [7]
    assert eos_token_ids(model, tokenizer) == {7, eos, im_end}
    tokenizer.chat_template = None  # plain style only: no end-of-turn token
    assert eos_token_ids(model, tokenizer) == {7, eos}


def test_the_answer_is_decoded_without_special_tokens_and_cut_at_the_first_stop():
    _, tokenizer = _tiny()
    ids = tokenizer("so 12 apples.\n\nQuestion: more", add_special_tokens=False)["input_ids"]
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    check = StopCheck(tokenizer, GSM8K_STOP, eos_ids={im_end})
    generation = to_generation(tokenizer, [*ids, im_end], check)
    assert generation.text == "so 12 apples.\n\n"
    assert generation.new_tokens == len(ids) + 1 and generation.ended


def test_only_an_answer_cut_off_at_max_new_tokens_counts_as_not_ended():
    """An answer whose end-of-sequence id or stop string is its last allowed token ended: truncated_fraction
    counts the answers cut off, not those that happened to end at the limit."""
    _, tokenizer = _tiny()
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    check = StopCheck(tokenizer, GSM8K_STOP, eos_ids={im_end})
    words = tokenizer("so 12 apples", add_special_tokens=False)["input_ids"]
    assert to_generation(tokenizer, [*words, im_end], check).ended
    assert not to_generation(tokenizer, words, check).ended
    stop = tokenizer("so 12.\n\nQuestion:", add_special_tokens=False)["input_ids"]
    assert to_generation(tokenizer, stop, check).ended


# ---------------------------------------------------------------------------------------------- engines


def _run(model, tokenizer, prompts, engine, **kwargs):
    return generate(model, tokenizer, prompts, max_new_tokens=40, stop=VARIED_STOP, engine=engine, **kwargs)


def test_engines_give_the_same_tokens(varied_tiny, zero_shot_prompts):
    model, tokenizer = varied_tiny
    results = {engine: _run(model, tokenizer, zero_shot_prompts, engine, max_batch_size=16) for engine in ENGINES}
    plain = results["plain"]
    lengths = [g.new_tokens for g in plain]
    assert len(set(lengths)) > 3, "rows end at different steps"
    assert min(lengths) < 40 and max(lengths) == 40
    for engine in ("cache", "static"):
        assert [(g.text, g.new_tokens) for g in results[engine]] == [(g.text, g.new_tokens) for g in plain]


def test_static_with_few_slots_gives_the_same_tokens_as_the_other_engines(varied_tiny, many_prompts):
    model, tokenizer = varied_tiny
    plain = _run(model, tokenizer, many_prompts, "plain", max_batch_size=8)
    lengths = [g.new_tokens for g in plain]
    assert len(set(lengths)) > 5 and min(lengths) < 10 and max(lengths) == 40
    expected = [(g.text, g.new_tokens) for g in plain]
    assert [(g.text, g.new_tokens) for g in _run(model, tokenizer, many_prompts, "cache", max_batch_size=3)] == expected
    for slots in (1, 3, 7):
        got = _run(model, tokenizer, many_prompts, "static", max_batch_size=slots)
        assert [(g.text, g.new_tokens) for g in got] == expected, f"{slots} slots"
    # the token budget sets the slot count too; several prompts read per prefill forward
    longest = max(len(tokenizer(p)["input_ids"]) for p in many_prompts)
    got = _run(model, tokenizer, many_prompts, "static", token_budget=5 * (longest + 40), prefill_batch_size=4)
    assert [(g.text, g.new_tokens) for g in got] == expected


def _forward_shapes(model) -> tuple[list[tuple[int, int]], object]:
    shapes: list[tuple[int, int]] = []
    handle = model.model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    return shapes, handle


def test_a_finished_sequence_s_slot_takes_the_next_prompt(varied_tiny, many_prompts):
    model, tokenizer = varied_tiny
    shapes, handle = _forward_shapes(model)
    try:
        generations = _run(model, tokenizer, many_prompts, "static", max_batch_size=4)
    finally:
        handle.remove()
    last_prefill = max(i for i, (_, width) in enumerate(shapes) if width > 1)
    decode_rows = [rows for rows, width in shapes if width == 1]
    while_waiting = [rows for rows, width in shapes[:last_prefill] if width == 1]
    assert sum(width > 1 for _, width in shapes) == len(many_prompts), "one prefill forward per prompt on CPU"
    assert len(while_waiting) > 50 and set(while_waiting) == {4}, "all slots run while prompts wait"
    # every row of every decode step is a running sequence (its first token comes from its prefill)
    assert sum(decode_rows) == sum(g.new_tokens - 1 for g in generations)
    lengths = [len(ids) for ids in tokenizer(many_prompts)["input_ids"]]
    batch_at_a_time = sum(max(generations[i].new_tokens for i in batch) - 1
                          for batch in token_budget_batches(lengths, 40, 65536, 4))
    assert len(decode_rows) < 0.8 * batch_at_a_time


def test_repetition_penalty_is_reset_when_a_slot_is_refilled(varied_tiny, many_prompts):
    model, tokenizer = varied_tiny
    prompts = many_prompts[:16]
    model.generation_config.repetition_penalty = 1.5
    try:
        # one prompt per batch: model.generate would also penalise the left padding of a batch
        plain = _run(model, tokenizer, prompts, "plain", max_batch_size=1)
        static = _run(model, tokenizer, prompts, "static", max_batch_size=3)
    finally:
        model.generation_config.repetition_penalty = 1.0
    assert [(g.text, g.new_tokens) for g in static] == [(g.text, g.new_tokens) for g in plain]


@pytest.mark.parametrize("engine", ["cache", "static"])
def test_prompts_read_one_by_one_or_in_groups_give_the_same_tokens(varied_tiny, zero_shot_prompts, engine):
    model, tokenizer = varied_tiny
    one_by_one = _run(model, tokenizer, zero_shot_prompts, engine, max_batch_size=16, prefill_batch_size=1)
    for group in (5, 16):
        grouped = _run(model, tokenizer, zero_shot_prompts, engine, max_batch_size=16, prefill_batch_size=group)
        assert [g.text for g in grouped] == [g.text for g in one_by_one]


@pytest.mark.parametrize("engine", ["cache", "static"])
def test_nan_left_at_padding_positions_by_a_grouped_prefill_does_not_reach_the_answers(varied_tiny,
                                                                                       zero_shot_prompts, engine,
                                                                                       monkeypatch):
    """A padding position's query sees no key: what an attention kernel leaves there is not defined (NaN with some).
    Keys and values of padding positions set to NaN after a grouped prefill must not reach the answers: later steps
    still read those columns (masked), and a NaN value survives its zero weight."""
    from slm_sweep.evaluate import decode

    model, tokenizer = varied_tiny
    prompts = zero_shot_prompts[:8]
    one_by_one = _run(model, tokenizer, prompts, engine, max_batch_size=8, prefill_batch_size=1)
    read_prompts, poisoned = decode._read_prompts, []

    def read_with_nan_at_padding(model, rows, settings):
        logits, layers, input_ids, mask = read_prompts(model, rows, settings)
        padding = (mask == 0)[:, None, :, None]
        poisoned.append(int(padding.sum()))
        return logits, [(k.masked_fill(padding, float("nan")), v.masked_fill(padding, float("nan")))
                        for k, v in layers], input_ids, mask

    monkeypatch.setattr(decode, "_read_prompts", read_with_nan_at_padding)
    grouped = _run(model, tokenizer, prompts, engine, max_batch_size=8, prefill_batch_size=8)
    assert sum(poisoned) > 0
    assert [g.text for g in grouped] == [g.text for g in one_by_one]


def test_repetition_penalty_of_the_generation_config_is_applied_as_model_generate_does(varied_tiny,
                                                                                     zero_shot_prompts):
    model, tokenizer = varied_tiny
    prompts = zero_shot_prompts[:8]
    before = _run(model, tokenizer, prompts, "cache", max_batch_size=8)
    model.generation_config.repetition_penalty = 1.5
    try:
        # one prompt per batch: model.generate would also penalise the left padding of a batch
        plain = _run(model, tokenizer, prompts, "plain", max_batch_size=1)
        for engine in ("cache", "static"):
            assert [g.text for g in _run(model, tokenizer, prompts, engine, max_batch_size=8)] == [g.text for g in plain]
    finally:
        model.generation_config.repetition_penalty = 1.0
    assert [g.text for g in plain] != [g.text for g in before]


def test_other_logits_processors_fall_back_to_model_generate(varied_tiny, zero_shot_prompts, caplog):
    model, tokenizer = varied_tiny
    model.generation_config.no_repeat_ngram_size = 2
    try:
        stats: dict = {}
        cache = _run(model, tokenizer, zero_shot_prompts[:4], "cache", stats=stats)
        plain = _run(model, tokenizer, zero_shot_prompts[:4], "plain")
    finally:
        model.generation_config.no_repeat_ngram_size = 0
    assert "using eval.engine=plain" in caplog.text
    assert stats["engine"] == "plain"  # what result.json records: the engine that decoded
    assert [g.text for g in cache] == [g.text for g in plain]


def test_batching_does_not_change_the_answers(varied_tiny, zero_shot_prompts):
    model, tokenizer = varied_tiny
    batched = _run(model, tokenizer, zero_shot_prompts, "cache", max_batch_size=16)
    alone = [_run(model, tokenizer, [p], "cache")[0] for p in zero_shot_prompts[:6]]
    assert [g.text for g in alone] == [g.text for g in batched[:6]]


@pytest.mark.parametrize("engine", ["static", "cache"])
def test_finished_sequences_leave_the_batch(varied_tiny, zero_shot_prompts, engine):
    model, tokenizer = varied_tiny
    shapes: list[tuple[int, int]] = []
    handle = model.model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    try:
        generations = _run(model, tokenizer, zero_shot_prompts, engine, max_batch_size=16)
    finally:
        handle.remove()
    step_sizes = [batch for batch, length in shapes if length == 1]  # decode steps; the prefill reads prompts
    running = [sum(g.new_tokens > step for g in generations) for step in range(1, 40)]
    assert step_sizes == running[: len(step_sizes)]
    assert step_sizes[0] == 16 and step_sizes[-1] < 16
    assert step_sizes == sorted(step_sizes, reverse=True)


@pytest.mark.parametrize("engine", ["cache", "static"])
def test_each_generation_is_reported_when_it_ends(varied_tiny, zero_shot_prompts, engine):
    model, tokenizer = varied_tiny
    seen: list[tuple[int, int]] = []
    generations = _run(model, tokenizer, zero_shot_prompts, engine, max_batch_size=16,
                       on_done=lambda indices, gens: seen.extend((i, g.new_tokens) for i, g in zip(indices, gens)))
    assert sorted(i for i, _ in seen) == list(range(16))
    assert [n for _, n in seen] == sorted(g.new_tokens for g in generations)


def test_evaluate_scores_the_generations_and_reports_throughput(varied_tiny, requires_data):
    """Questions 0, 2 and 4 get the last number their own (greedy, so known beforehand) answer writes as the
    reference; the others keep GSM8K's, which these random answers do not write: half are right."""
    import re
    from dataclasses import replace

    from slm_sweep.scoring import METRICS

    model, tokenizer = varied_tiny
    examples = load_splits(dataset_spec("gsm8k"), data_root=requires_data, need_train=False).test[:6]
    prompts = [f"Question: {ex.question}\nAnswer:" for ex in examples]
    direct = generate(model, tokenizer, prompts, max_new_tokens=16, stop=VARIED_STOP)
    answered = (0, 2, 4)
    numbers = [re.findall(r"[0-9]+", g.text) for g in direct]
    assert all(numbers[i] for i in answered), [g.text for g in direct]
    examples = [replace(ex, reference=numbers[i][-1]) if i in answered else ex for i, ex in enumerate(examples)]
    eval_cfg = {"max_new_tokens": 16, "stop": VARIED_STOP, "max_batch_size": 4}
    records, metrics = evaluate(model, tokenizer, examples, prompts, eval_cfg, "gsm8k", progress=True)
    assert [r["index"] for r in records] == list(range(6))
    assert [r["output"] for r in records] == [g.text for g in direct]
    assert [r["reference"] for r in records] == [ex.reference for ex in examples]
    assert [r["correct_flexible"] for r in records] == [i in answered for i in range(6)]
    assert metrics["n_eval"] == 6 and metrics["accuracy_flexible"] == 0.5
    for name, metric in METRICS.items():
        verdicts = [metric.correct(r["output"], r["reference"], None) for r in records]
        assert [r[f"correct_{name}"] for r in records] == verdicts, name
        assert metrics[f"accuracy_{name}"] == pytest.approx(sum(verdicts) / 6), name
    assert metrics["eval_new_tokens"] == sum(g.new_tokens for g in direct) and metrics["eval_tokens_per_s"] > 0


def test_unknown_engine_is_an_error(varied_tiny):
    model, tokenizer = varied_tiny
    with pytest.raises(ValueError, match="eval.engine='fast' is not one of static, cache, plain"):
        generate(model, tokenizer, ["Question: 1\nAnswer:"], engine="fast")


@pytest.mark.slow
def test_engines_agree_on_smollm(requires_data):
    from slm_sweep.data.prompts import ShotSampler
    from slm_sweep.evaluate.evaluator import build_eval_prompts

    model, tokenizer = load_model_and_tokenizer(OmegaConf.load(CONF_DIR / "model" / "smollm135_q4.yaml"),
                                                cache_dir=".cache/slm_sweep")
    splits = load_splits({**dataset_spec("gsm8k"), "val_size": None}, data_root=requires_data)
    prompts = build_eval_prompts(tokenizer, splits.test[:12], "plain", ShotSampler(splits.train, 5, seed=1234))
    results = {engine: generate(model, tokenizer, prompts, max_new_tokens=96, stop=GSM8K_STOP, engine=engine,
                                max_batch_size=6) for engine in ENGINES}
    assert any(g.new_tokens < 96 for g in results["plain"]), "some answers end at a stop string"
    for engine in ("cache", "static"):
        assert [g.text for g in results[engine]] == [g.text for g in results["plain"]]


# ---------------------------------------------------------------------------------------------- out of memory


@pytest.mark.parametrize("engine", ["static", "plain"])
def test_out_of_memory_in_evaluation_halves_the_batch_and_gives_the_same_answers(varied_tiny, zero_shot_prompts,
                                                                                 engine):
    model, tokenizer = varied_tiny
    expected = _run(model, tokenizer, zero_shot_prompts, engine, max_batch_size=16)
    reported: list[int] = []
    stats: dict = {}
    fault = OutOfMemoryAbove(model, rows=4)
    try:
        got = _run(model, tokenizer, zero_shot_prompts, engine, max_batch_size=16, stats=stats,
                   on_done=lambda indices, gens: reported.extend(indices))
    finally:
        fault.remove()
    assert fault.refused == 2 and stats["oom_halvings"] == 2  # 16 rows fail, then 8, then 4 fit
    assert max(rows for rows, _ in fault.shapes) == 4
    assert [(g.text, g.new_tokens) for g in got] == [(g.text, g.new_tokens) for g in expected]
    assert sorted(reported) == list(range(len(zero_shot_prompts))), "each answer is reported once"


def test_out_of_memory_while_slots_are_refilled_keeps_the_answers_already_reported(varied_tiny, many_prompts):
    model, tokenizer = varied_tiny
    expected = _run(model, tokenizer, many_prompts, "static", max_batch_size=8)
    forwards = {"decode": 0, "refused": 0}

    def fail_once_midway(module, args, kwargs):
        rows, width = kwargs["input_ids"].shape
        if width == 1 and rows > 4:
            forwards["decode"] += 1
            if forwards["decode"] == 30:
                forwards["refused"] += 1
                raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    reported: list[int] = []
    stats: dict = {}
    handle = model.register_forward_pre_hook(fail_once_midway, with_kwargs=True)
    try:
        got = _run(model, tokenizer, many_prompts, "static", max_batch_size=8, stats=stats,
                   on_done=lambda indices, gens: reported.extend(indices))
    finally:
        handle.remove()
    assert forwards["refused"] == 1 and stats["oom_halvings"] == 1
    assert [(g.text, g.new_tokens) for g in got] == [(g.text, g.new_tokens) for g in expected]
    assert sorted(reported) == list(range(len(many_prompts))), "each answer is reported once"


def test_the_cpu_allocator_s_refusal_counts_as_out_of_memory():
    """On a CPU an allocation past the machine's memory raises a plain RuntimeError ("DefaultCPUAllocator: can't
    allocate memory"), which failed the cell instead of halving its batch as on a GPU."""
    from slm_sweep.memory import is_out_of_memory

    with pytest.raises(RuntimeError) as refused:
        torch.empty(1 << 50, dtype=torch.uint8)  # a pebibyte: more than any address space maps
    assert is_out_of_memory(refused.value)
    assert not is_out_of_memory(RuntimeError("The size of tensor a (4) must match the size of tensor b (5)"))


def test_out_of_memory_on_a_single_prompt_is_a_clear_error(varied_tiny, zero_shot_prompts):
    model, tokenizer = varied_tiny
    fault = OutOfMemoryAbove(model, rows=0)
    try:
        with pytest.raises(RuntimeError, match="single prompt of .* tokens with eval.max_new_tokens=40"):
            _run(model, tokenizer, zero_shot_prompts[:3], "static")
    finally:
        fault.remove()


def test_a_decode_step_whose_graph_cannot_be_captured_runs_eagerly(caplog):
    """If a model or library version cannot be recorded as a CUDA graph, decoding goes on eagerly with the same
    logits (here the capture fails for want of CUDA)."""
    import logging

    from slm_sweep.evaluate.decode import Decoding, GraphUse, SlotKVCache, _DecodeStep, _read_prompts
    from slm_sweep.evaluate.generate import graph_report

    model, tokenizer = _tiny()
    model.eval()
    settings = Decoding(max_new_tokens=4, stop_check=StopCheck(tokenizer, [], set()), pad_id=0)
    rows = [tokenizer("how many apples")["input_ids"], tokenizer("half of the eggs")["input_ids"]]
    with torch.inference_mode():
        _, layers, input_ids, mask = _read_prompts(model, rows, settings)
        width, length = input_ids.shape[1], input_ids.shape[1] + 4
        valid = torch.zeros((2, length), dtype=torch.bool)
        valid[:, :width] = mask.bool()
        valid[:, width] = True
        args = (torch.tensor([5, 7]), mask.sum(1), torch.full((2,), width), valid)
        outputs, graphs = [], GraphUse()
        for use_graph in (False, True):
            cache = SlotKVCache(layers, 2, length)
            cache.write(torch.arange(2), layers)
            step = _DecodeStep(model, cache, 2, use_graph, graphs)
            with caplog.at_level(logging.WARNING, logger="slm_sweep.evaluate.decode"):
                outputs.append(step(*args, length))
    torch.testing.assert_close(outputs[0], outputs[1])
    assert any("decoding eagerly" in m for m in caplog.messages)
    # the failure is kept for result.json, and the step does not try again
    assert not step.use_graph and graphs.captured == 0 and graphs.failure
    report = graph_report(True, "static", model, graphs)
    assert report["captured"] == 0 and report["failure"] == graphs.failure
    # on this CPU the model's device is the first reason; the failure text stays beside it
    assert report["not_used"] == "the model is on cpu"


@pytest.mark.parametrize(("engine", "requested", "not_used"), [
    ("static", True, "the model is on cpu"),
    ("cache", True, "eval.engine=cache (graphs need static)"),
    ("static", False, None),
])
def test_generation_says_which_engine_decoded_and_whether_graphs_were_replayed(varied_tiny, zero_shot_prompts,
                                                                                engine, requested, not_used):
    model, tokenizer = varied_tiny
    stats: dict = {}
    generate(model, tokenizer, zero_shot_prompts[:2], max_new_tokens=3, engine=engine, cuda_graphs=requested,
             stats=stats)
    assert stats["engine"] == engine
    assert stats["cuda_graphs"] == {"requested": requested, "captured": 0, "failure": None, "not_used": not_used}


def test_sliding_window_layers_decode_with_the_cache_engine_under_the_default_eval_config(requires_data):
    """The slot cache of ``static`` does not window its attention: a model with sliding-window layers (Gemma 3)
    decodes with ``cache`` whatever the generation config, the default (neutral) included, and says so."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from tests.conftest import compose_config

    _, tokenizer = _tiny()
    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=6,
                              layer_types=["sliding_attention", "full_attention"], max_position_embeddings=256,
                              tie_word_embeddings=False)
    model = Gemma3ForCausalLM(config).eval()
    torch.nn.init.normal_(model.lm_head.weight)  # varied text rather than the last token repeated
    eval_cfg = compose_config(["eval.max_new_tokens=12"]).eval
    assert (eval_cfg.engine, eval_cfg.generation_config) == ("static", "neutral")
    examples = load_splits(dataset_spec("gsm8k"), data_root=requires_data, need_train=False).test[:3]
    prompts = [f"Question: {ex.question}\nAnswer:" for ex in examples]
    assert min(len(tokenizer(p).input_ids) for p in prompts) > 2 * config.sliding_window

    records, metrics = evaluate(model, tokenizer, examples, prompts, eval_cfg, "gsm8k", progress=False)
    plain = generate(model, tokenizer, prompts, max_new_tokens=12, stop=list(eval_cfg.stop), engine="plain",
                     max_batch_size=1)
    assert metrics["engine"] == "cache"
    assert [r["output"] for r in records] == [g.text for g in plain]


def test_a_sliding_window_without_layer_types_is_one(monkeypatch):
    """Mistral and Phi-3 configs set ``sliding_window`` and no ``layer_types``: every layer windows its attention.
    Qwen2's configs name their layers full, or turn the window off with ``use_sliding_window``."""
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    from slm_sweep.evaluate.decode import has_sliding_layers

    class Model:
        def __init__(self, config):
            self.config = config

    mistral = MistralConfig(sliding_window=8)
    mistral.layer_types = None  # as transformers 5.17 leaves it
    assert has_sliding_layers(Model(mistral))
    assert not has_sliding_layers(Model(MistralConfig(sliding_window=None)))
    assert not has_sliding_layers(Model(LlamaConfig()))
    qwen = Qwen2Config(sliding_window=4096, use_sliding_window=False)
    assert not has_sliding_layers(Model(qwen))
    qwen.layer_types = None
    assert not has_sliding_layers(Model(qwen))


@pytest.mark.parametrize("generation_config", ["neutral", "model"])
@pytest.mark.parametrize("engine", ENGINES)
def test_beam_search_in_the_generation_config_is_set_aside_and_said(varied_tiny, zero_shot_prompts, engine,
                                                                    generation_config):
    """Decoding is greedy: a model whose generation config asks for beams decodes greedily with every engine
    (``plain`` once indexed its per-row stops by beam rows) and records that it set the beams aside."""
    model, tokenizer = varied_tiny
    prompts = zero_shot_prompts[:3]
    greedy = generate(model, tokenizer, prompts, max_new_tokens=8, stop=["Question:"], engine="plain",
                      max_batch_size=1)
    model.generation_config.num_beams = 3
    stats: dict = {}
    try:
        beams = generate(model, tokenizer, prompts, max_new_tokens=8, stop=["Question:"], engine=engine,
                         max_batch_size=1, stats=stats, generation_config=generation_config)
    finally:
        model.generation_config.num_beams = 1
    assert [g.text for g in beams] == [g.text for g in greedy]
    assert stats["generation_config_ignored"] == {"num_beams": 3}


@pytest.mark.parametrize("engine", ENGINES)
def test_a_prompt_of_no_tokens_is_a_clear_error(varied_tiny, engine):
    model, tokenizer = varied_tiny
    assert tokenizer("", add_special_tokens=True).input_ids == []
    with pytest.raises(ValueError, match=r"1 prompt\(s\) encode to no tokens \(the first: prompt 1, ''\)"):
        generate(model, tokenizer, ["Question: 1+1?\nAnswer:", ""], max_new_tokens=4, engine=engine)


def test_slot_cache_memory_left_from_earlier_use_does_not_reach_the_logits(varied_tiny):
    """The slot cache is allocated uninitialised; whatever the memory held (NaN here) must not leak through the
    masked columns that a step reads but no prompt or step has written."""
    from slm_sweep.evaluate.decode import Decoding, SlotKVCache, _DecodeStep, _read_prompts

    model, tokenizer = varied_tiny
    settings = Decoding(max_new_tokens=4, stop_check=StopCheck(tokenizer, [], set()), pad_id=0)
    rows = [tokenizer("how many apples are left")["input_ids"], tokenizer("half")["input_ids"]]
    with torch.inference_mode():
        layers = [_read_prompts(model, [row], settings)[1] for row in rows]
        length = max(map(len, rows)) + 4
        outputs = []
        for garbage in (0.0, float("nan")):
            cache = SlotKVCache(layers[0], 2, length)
            for tensor in [*cache.keys, *cache.values]:
                tensor.fill_(garbage)
            valid = torch.zeros((2, length), dtype=torch.bool)
            for slot, (row, written) in enumerate(zip(rows, layers)):
                cache.write(torch.tensor([slot]), written)
                valid[slot, :len(row)] = True
            columns = torch.tensor([len(r) for r in rows])
            valid[torch.arange(2), columns] = True
            outputs.append(_DecodeStep(model, cache, 2, use_graph=False)(
                torch.tensor([5, 7]), columns, columns, valid, length))
    assert torch.isfinite(outputs[1]).all()
    torch.testing.assert_close(outputs[0], outputs[1])


def test_few_rows_go_through_the_linear_layers_weight_first_on_cpu_and_only_inside_the_block(varied_tiny):
    from slm_sweep.evaluate.weight_first import LAYER_MAX_ROWS, weight_first_linears

    model, _ = varied_tiny
    head, layer = model.lm_head, model.model.layers[0].mlp.down_proj
    few, many = torch.randn(3, head.in_features), torch.randn(LAYER_MAX_ROWS + 1, layer.in_features)
    with torch.inference_mode():
        plain = head(few)
        with weight_first_linears(model):
            assert torch.equal(head(few), torch.mm(head.weight, few.T).T)
            assert torch.equal(layer(many), torch.nn.functional.linear(many, layer.weight)), "many rows: unchanged"
            assert torch.equal(head(few[:1]), torch.nn.functional.linear(few[:1], head.weight))
            torch.testing.assert_close(head(few), plain)
        assert not any("forward" in vars(m) for m in model.modules()), "every layer restored after the block"
        assert torch.equal(head(few), plain)


@pytest.mark.parametrize("engine", ["static", "cache", "plain"])
def test_neutral_decoding_sets_the_generation_config_aside_and_says_what(varied_tiny, zero_shot_prompts, engine):
    """Every model decodes the same way: a penalty or processor in its generation config (Qwen2.5 ships
    repetition_penalty=1.1) is set aside, and recorded."""
    model, tokenizer = varied_tiny
    prompts = zero_shot_prompts[:6]
    plain_greedy = generate(model, tokenizer, prompts, max_new_tokens=12, stop=["Question:"], engine="plain",
                            max_batch_size=1)
    model.generation_config.repetition_penalty = 1.5
    model.generation_config.no_repeat_ngram_size = 2
    stats: dict = {}
    try:
        # model.generate's left padding shifts its numerics: plain is compared one prompt at a time
        neutral = generate(model, tokenizer, prompts, max_new_tokens=12, stop=["Question:"], engine=engine,
                           max_batch_size=1 if engine == "plain" else 3, stats=stats, generation_config="neutral")
        honoured = generate(model, tokenizer, prompts, max_new_tokens=12, stop=["Question:"], engine="plain",
                            max_batch_size=1, generation_config="model")
    finally:
        model.generation_config.repetition_penalty = 1.0
        model.generation_config.no_repeat_ngram_size = 0
    assert [g.text for g in neutral] == [g.text for g in plain_greedy]
    assert [g.text for g in honoured] != [g.text for g in plain_greedy]
    assert stats["generation_config_ignored"] == {"repetition_penalty": 1.5, "no_repeat_ngram_size": 2}


def test_a_cell_records_its_decoding(tiny_cfg, tmp_path):
    from slm_sweep.run import run

    record = run(tiny_cfg("method=zeroshot", "dataset.test_limit=2"), out_dir=tmp_path)
    profile = record["decoding"].pop("profile")
    assert list(profile) == [record["config"]["dataset"]["name"]]
    # both questions read in prefill forwards (one at a time on CPU), then decode steps over the slots
    assert profile[record["config"]["dataset"]["name"]]["prefill_forwards"] == 2
    assert profile[record["config"]["dataset"]["name"]]["decode_steps"] >= 1
    assert 0 < profile[record["config"]["dataset"]["name"]]["slot_occupancy"] <= 1
    assert record["decoding"] == {"greedy": True, "max_new_tokens": 12, "stop": ["Question:", "</s>", "<|im_end|>"],
                                  "generation_config": "neutral", "generation_config_ignored": {},
                                  "engine": "static", "cuda_graphs": {"requested": False, "captured": 0,
                                                                      "failure": None, "not_used": None}}


def _meta_decode_step(architecture: str, attention: str):
    """A decode step of a small model of ``architecture`` whose weights, KV cache and inputs are on the meta device."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    from slm_sweep.evaluate.decode import SlotKVCache, _DecodeStep

    config_class = {"llama": LlamaConfig, "qwen2": Qwen2Config}[architecture]
    config = config_class(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, attn_implementation=attention)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config).eval()
    slots, length, head_dim = 4, 16, config.hidden_size // config.num_attention_heads
    layers = [(torch.empty((1, 2, 5, head_dim), device="meta"),) * 2 for _ in range(config.num_hidden_layers)]
    step = _DecodeStep(model, SlotKVCache(layers, slots, length), slots, use_graph=False)
    inputs = (*(torch.zeros(slots, dtype=torch.long, device="meta") for _ in range(3)),
              torch.zeros((slots, length), dtype=torch.bool, device="meta"))
    return model, step, inputs, length


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_a_decode_step_reads_nothing_back_to_the_host(architecture, attention):
    """What a CUDA graph records must not read a value back to the host (``.item()``, a branch on a tensor):
    capture would fail and decoding would fall back to eager. The meta device holds shapes but no values, so any
    such read fails there; a step that runs on it is one a graph can record, for the study's architectures
    (SmolLM2 and Llama are ``llama``, Qwen2.5 ``qwen2``; Gemma 3's sliding layers decode with eval.engine=cache)."""
    from slm_sweep.evaluate.attention import stacked_gqa_decoding

    model, step, inputs, length = _meta_decode_step(architecture, attention)
    with torch.inference_mode(), stacked_gqa_decoding(model):  # as generate runs the static loop
        logits = step(*inputs, length)
    assert logits.device.type == "meta" and logits.shape == (4, 64)

    # the probe catches a read-back when there is one
    model.model.norm.register_forward_hook(lambda module, args, output: output.abs().sum().item())
    with torch.inference_mode(), pytest.raises((RuntimeError, NotImplementedError)):
        step(*inputs, length)


def test_the_cache_argument_name_is_looked_up_once_per_model_and_does_not_keep_it_alive():
    import gc
    import weakref

    from transformers import LlamaConfig, LlamaForCausalLM

    from slm_sweep.evaluate.decode import _CACHE_KWARG, _cache_kwarg

    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    assert _cache_kwarg(model) in ("cache", "past_key_values")
    assert model in _CACHE_KWARG
    # under a PEFT wrapper the name is the base model's (PeftModel.forward keeps past_key_values, passed through
    # a deprecation shim that later releases drop)
    from peft import LoraConfig, get_peft_model

    wrapped = get_peft_model(LlamaForCausalLM(model.config), LoraConfig(r=2, target_modules=["q_proj"]))
    assert _cache_kwarg(wrapped) == _cache_kwarg(model)
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None


@pytest.mark.parametrize("schedule", ["cpu", "cuda"])
def test_the_decode_loop_generates_each_planned_length_at_full_and_refilled_slots(schedule):
    """bench/decode_host.py's countdown model through the static loop: 60 prompts over 8 slots, each ending after
    its own number of tokens or running to the limit; the bench fails if any length differs. Both schedules: this
    CPU's (a slot refilled at once, one prompt per prefill) and a CUDA device's with graphs (refills grouped, slots
    packed in halving steps), which the bench plays on the CPU."""
    import sys

    sys.path.insert(0, str(CONF_DIR.parents[1] / "bench"))
    import decode_host

    result = decode_host.main(["--questions", "60", "--slots", "16", "--min-new", "3", "--max-new", "40",
                               "--prompt-tokens", "5", "30", "--schedule", schedule])
    assert result["questions"] == 60 and result["schedule"] == schedule
    # at most 16 tokens per step (16 slots), at least one
    assert result["new_tokens"] / 16 <= result["decode_steps"] <= result["new_tokens"]
    # the loop's own profile agreed with the model's count of its calls (the bench fails otherwise)
    assert result["new_tokens"] / (16 * result["decode_steps"]) <= result["slot_occupancy"] <= 1
    if schedule == "cpu":
        assert result["prefill_forwards"] == 60
    else:  # the first 16 prompts in one forward, then refills of at least 2 (an eighth of 16) at a time
        assert result["prefill_forwards"] <= 1 + (60 - 16) // 2


@pytest.mark.parametrize("schedule_as", [None, "cuda"])
def test_a_free_slot_is_fed_no_position_past_the_longest_row(schedule_as):
    """Under the CUDA schedule a free slot waits for a refill or packing; its position id must not count on past
    the context window (a model of learned positions would index out of range; dynamic RoPE rescales every row)."""
    import sys

    sys.path.insert(0, str(CONF_DIR.parents[1] / "bench"))
    from decode_host import CountdownLM

    from slm_sweep.evaluate.decode import Decoding, decode_static

    class Probe(CountdownLM):
        largest = 0

        def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=True, logits_to_keep=1,
                    cache=None):
            self.largest = max(self.largest, int(position_ids.max()))
            return super().forward(input_ids, attention_mask, position_ids, cache=cache)

    model, vocab = Probe(64), 64
    rows = [[7] * 47 + [last] for last in (3, vocab - 1, 7, 11, vocab - 1, vocab - 1, vocab - 1)]
    settings = Decoding(max_new_tokens=16, stop_check=StopCheck(None, [], {0}), pad_id=0, schedule_as=schedule_as)
    lengths = {}
    decode_static(model, rows, settings, lambda row, tokens: lengths.__setitem__(row, len(tokens)), slots=4)
    assert [lengths[i] for i in range(len(rows))] == [3, 16, 7, 11, 16, 16, 16]
    assert model.largest < 48 + 16  # the context a row of 48 prompt tokens and 16 new ones spans


def test_one_decode_pass_over_several_sets_takes_fewer_steps_than_one_pass_per_set():
    """bench/decode_host.py --sets: the same questions, planned lengths checked in every pass; a pass per set runs
    its slots down to its last question each time, one pass over all of them once."""
    import sys

    sys.path.insert(0, str(CONF_DIR.parents[1] / "bench"))
    import decode_host

    result = decode_host.compare_sets(["--sets", "20", "9", "9", "--slots", "8", "--min-new", "3", "--max-new", "30",
                                       "--prompt-tokens", "5", "20"])
    assert result["new_tokens"] / 8 <= result["one_pass_steps"] < result["separate_steps"]
