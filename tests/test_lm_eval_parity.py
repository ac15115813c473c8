"""Both few-shot baselines reproduce lm-evaluation-harness's gsm8k task, question by question.

lm-eval runs its own gsm8k task (v3) through its HF backend on the same in-memory model and the local GSM8K
files, as its CLI does by default (``method=fewshot``) and with ``--apply_chat_template --fewshot_as_multiturn``
(``method=fewshot_chat``). Our prompts (the method's ``PromptFormat`` with a ``ShotSampler`` over the whole
train split, seed 1234) and our evaluator must give the same prompt and its tokens, the same generation, the
same strict and flexible answers and the same accuracy for every question.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from slm_sweep.data import dataset_spec, load_splits
from slm_sweep.data.prompts import ShotSampler, resolve_format
from slm_sweep.evaluate.batching import encode_prompts
from slm_sweep.evaluate.evaluator import build_eval_prompts, evaluate, score_output
from slm_sweep.models import load_model_and_tokenizer
from slm_sweep.scoring import normalise
from tests.conftest import CONF_DIR, compose_config

pytest.importorskip("lm_eval", reason="lm-eval is in the dev extra")

from slm_sweep.evaluate.lm_eval_gsm8k import FILTERS, run_lm_eval_gsm8k  # noqa: E402

LM_EVAL_SHOT_SEED = 1234  # lm_eval.simple_evaluate's default fewshot_random_seed
# lm-eval's gsm8k as its CLI runs it: 256 new tokens, its stop strings, the model's generation config applied (the
# defaults of a cell depart on purpose: 512 tokens, neutral greedy decoding)
GSM8K_EVAL = {"max_new_tokens": 256, "stop": ["Question:", "</s>", "<|im_end|>"], "generation_config": "model"}


pytestmark = pytest.mark.usefixtures("one_thread")


def _lm_eval_answer(filtered: str):
    """lm-eval's filtered answer as ``scoring.extract_answer`` reports it: normalised, None when there is none."""
    if filtered == "[invalid]":
        return None
    answer = normalise(filtered)
    return answer if any(ch.isdigit() for ch in answer) else None


# our method -> lm-eval's apply_chat_template (with fewshot_as_multiturn)
FORMATS = {"fewshot": False, "fewshot_chat": True}


def _assert_same_as_lm_eval(model, tokenizer, data_root, limit: int, lm_eval_batch_size: int,
                            method: str = "fewshot") -> None:
    method_cfg = compose_config([f"method={method}"]).method
    prompt_format = resolve_format(method_cfg, {"style": "auto"}, tokenizer, seed=0)
    assert (prompt_format.num_fewshot, prompt_format.shot_seed) == (5, LM_EVAL_SHOT_SEED)
    splits = load_splits({**dataset_spec("gsm8k"), "val_size": None}, data_root=data_root)
    test = splits.test[:limit]
    prompts = build_eval_prompts(tokenizer, test, prompt_format, ShotSampler(splits.train, 5, seed=LM_EVAL_SHOT_SEED))
    records, metrics = evaluate(model, tokenizer, test, prompts, GSM8K_EVAL, "gsm8k", progress=False)

    harness = run_lm_eval_gsm8k(model, tokenizer, data_root, limit=limit, batch_size=lm_eval_batch_size,
                                apply_chat_template=FORMATS[method])

    assert harness.task_version == 3.0
    assert all(p.count("Question: ") == 6 for p in prompts)  # five shots and the question
    assert all(("<|im_start|>user\nQuestion: " in p) == FORMATS[method] for p in prompts)  # the ChatML turns
    assert prompts == harness.prompts
    # and the same tokens, as lm-eval's HFLM encodes a context for generate_until
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1)
    lm_eval_ids = [lm.tok_batch_encode([p])[0][0].tolist() for p in harness.prompts]
    assert encode_prompts(tokenizer, prompts, 10**6) == lm_eval_ids
    assert [r["output"] for r in records] == harness.outputs
    for mode in ("strict", "flexible"):
        assert [r[f"extracted_{mode}"] for r in records] == [_lm_eval_answer(a) for a in harness.extracted[mode]]
        assert [float(r[f"correct_{mode}"]) for r in records] == harness.correct[mode]
        assert metrics[f"accuracy_{mode}"] == pytest.approx(harness.accuracy[mode])


def _known_answer_texts(solution: str) -> list[str]:
    """Outputs for one GSM8K question whose right and wrong answers are known: its reference solution, the
    solution ending in a wrong number, and short answers with and without a "####" line."""
    answer = solution.rsplit("#### ", 1)[1]
    wrong = str(int(answer.replace(",", "")) + 1)
    return [
        solution,                                          # strict and flexible right
        solution.rsplit("#### ", 1)[0] + f"#### {wrong}",  # both wrong
        f"The answer is {answer}.",                        # no strict answer; flexible right
        f"#### {answer}\nQuestion 2 asks for 3 more.",     # strict right; flexible reads the 3
        f"#### {answer}.0",                                # "18.0" is not "18" to exact match
        f"#### ${answer}",                                 # no strict answer (no "$" in its pattern)
        f"She pays ${answer}.00 in all.",                  # flexible "$18.00": wrong
        "I cannot work this out.",                         # neither
    ]


def test_known_answers_score_as_lm_eval_scores_them(requires_data):
    # The tiny model writes no "####" line and no right answer, so its parity above compares empty answers and
    # zero accuracies; here lm-eval's own filters and exact_match, configured from its installed gsm8k task
    # file, score outputs with known answers, and our scoring must agree on each.
    import lm_eval
    import lm_eval.filters  # noqa: F401  (registers the filters the task names)
    import yaml
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.api.registry import get_filter

    task = yaml.safe_load((Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml").read_text())
    assert task["metadata"]["version"] == 3.0
    assert task["doc_to_target"] == "{{answer}}"  # the reference is the whole solution
    [metric] = task["metric_list"]
    assert metric["metric"] == "exact_match"
    match_kwargs = {k: v for k, v in metric.items() if k not in ("metric", "aggregation", "higher_is_better")}
    assert set(match_kwargs) == {"regexes_to_ignore", "ignore_case", "ignore_punctuation"}
    pipelines = {entry["name"]: entry["filter"] for entry in task["filter_list"]}

    rows = [json.loads(line) for line in (requires_data / "gsm8k" / "test.jsonl").read_text().splitlines()]
    # the first questions, and those whose answer has a thousands separator or a sign
    picked = [i for i, row in enumerate(rows)
              if i < 20 or any(c in row["answer"].rsplit("#### ", 1)[1] for c in ",-")]
    ours = load_splits({**dataset_spec("gsm8k"), "val_size": None}, data_root=requires_data).test
    assert [ours[i].question for i in picked] == [rows[i]["question"] for i in picked]
    texts, solutions, references = [], [], []
    for i in picked:
        variants = _known_answer_texts(rows[i]["answer"])
        texts += variants
        solutions += [rows[i]["answer"]] * len(variants)
        references += [ours[i].reference] * len(variants)
    scored = [score_output(text, reference, None) for text, reference in zip(texts, references)]

    for mode, filter_name in FILTERS.items():
        filtered = [[text] for text in texts]
        for step in pipelines[filter_name]:
            kwargs = {k: v for k, v in step.items() if k != "function"}
            filtered = list(get_filter(step["function"])(**kwargs).apply(filtered, [{}] * len(texts)))
        matched = [float(exact_match_hf_evaluate([answer], [solution], **match_kwargs)["exact_match"])
                   for answer, solution in zip(filtered, solutions)]
        differ = [(text, s[f"extracted_{mode}"], answer, s[f"correct_{mode}"], right)
                  for text, s, answer, right in zip(texts, scored, filtered, matched)
                  if (s[f"extracted_{mode}"], float(s[f"correct_{mode}"])) != (_lm_eval_answer(answer), right)]
        assert not differ, f"{mode}: (text, ours, lm-eval's, our correct, lm-eval's) {differ[:5]}"
        # not vacuous: half the texts or more have an answer (4 and 7 of each question's 8), 2 and 3 of 8 are right
        assert sum(answer != "[invalid]" for answer in filtered) >= len(texts) / 2
        assert 0.2 < sum(matched) / len(matched) < 0.5


@pytest.mark.parametrize("method", FORMATS)
def test_tiny_model_matches_lm_eval(requires_data, method):
    # A tied random model repeats its last token whatever the prompt; an untied random output layer makes it
    # write varied text that depends on every prompt token, so any difference in prompt, truncation or
    # decoding shows up in the output. Its tokenizer has a ChatML template, so fewshot_chat is a real chat prompt.
    model, tokenizer = load_model_and_tokenizer(OmegaConf.load(CONF_DIR / "model" / "tiny.yaml"))
    assert tokenizer.chat_template
    generator = torch.Generator().manual_seed(0)
    model.config.tie_word_embeddings = False  # else lm-eval's HFLM ties the layers again
    model.lm_head.weight = torch.nn.Parameter(torch.randn(model.lm_head.weight.shape, generator=generator))
    _assert_same_as_lm_eval(model, tokenizer, requires_data, limit=8, lm_eval_batch_size=8, method=method)


@pytest.mark.slow
@pytest.mark.timeout(2400)
@pytest.mark.parametrize("method", FORMATS)
def test_smollm_matches_lm_eval(requires_data, method):
    model, tokenizer = load_model_and_tokenizer(OmegaConf.load(CONF_DIR / "model" / "smollm135_q4.yaml"),
                                                cache_dir=".cache/slm_sweep")
    _assert_same_as_lm_eval(model, tokenizer, requires_data, limit=30, lm_eval_batch_size=1, method=method)
