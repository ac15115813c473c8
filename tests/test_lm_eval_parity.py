"""Both few-shot baselines reproduce lm-evaluation-harness's gsm8k task, question by question.

lm-eval runs its own gsm8k task (v3) through its HF backend on the same in-memory model and the local GSM8K
files, as its CLI does by default (``method=fewshot``) and with ``--apply_chat_template --fewshot_as_multiturn``
(``method=fewshot_chat``). Our prompts (the method's ``PromptFormat`` with a ``ShotSampler`` over the whole
train split, seed 1234) and our evaluator must give the same prompt and its tokens, the same generation, the
same strict and flexible answers and the same accuracy for every question.
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from slm_sweep.data import dataset_spec, load_splits
from slm_sweep.data.prompts import ShotSampler, resolve_format
from slm_sweep.evaluate.batching import encode_prompts
from slm_sweep.evaluate.evaluator import build_eval_prompts, evaluate
from slm_sweep.models import load_model_and_tokenizer
from slm_sweep.scoring import normalise
from tests.conftest import CONF_DIR, compose_config

pytest.importorskip("lm_eval", reason="lm-eval is in the dev extra")

from slm_sweep.evaluate.lm_eval_gsm8k import run_lm_eval_gsm8k  # noqa: E402

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
