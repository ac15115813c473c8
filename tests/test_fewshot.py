"""Few-shot prompts: k training examples drawn with a fixed seed, never the test question itself."""

from __future__ import annotations

from omegaconf import OmegaConf

from slm_sweep.data import Example, dataset_spec, load_splits
from slm_sweep.data.prompts import PromptFormat, ShotSampler
from slm_sweep.evaluate.evaluator import build_eval_prompts
from slm_sweep.models import load_model_and_tokenizer
from tests.conftest import CONF_DIR


def _tokenizer():
    return load_model_and_tokenizer(OmegaConf.load(CONF_DIR / "model" / "tiny.yaml"))[1]


def test_prompts_never_contain_the_test_question(requires_data):
    splits = load_splits(dataset_spec("gsm8k"), data_root=requires_data)
    test = splits.test[:40]
    # a pool that holds every test question among the training examples: the sampler must still avoid each one
    pool = list(splits.train[:20]) + [Example(t.question, t.answer, t.reference) for t in test]
    tokenizer = _tokenizer()
    for prompt_format in ("chat", "plain", PromptFormat("lm_eval_chat", "chat", num_fewshot=5, shot_seed=1234)):
        prompts = build_eval_prompts(tokenizer, test, prompt_format, ShotSampler(pool, 5, seed=1234))
        for example, prompt in zip(test, prompts):
            assert prompt.count(example.question) == 1, "the test question appears once: as the question asked"
            assert example.answer not in prompt
            shots_in_prompt = sum(p.question in prompt for p in pool if p.question != example.question)
            assert shots_in_prompt == 5


def test_same_seed_same_shots_other_seed_other_shots(requires_data):
    splits = load_splits(dataset_spec("gsm8k"), data_root=requires_data)
    tokenizer = _tokenizer()
    test = splits.test[:10]
    a = build_eval_prompts(tokenizer, test, "plain", ShotSampler(splits.train, 5, seed=1234))
    b = build_eval_prompts(tokenizer, test, "plain", ShotSampler(splits.train, 5, seed=1234))
    c = build_eval_prompts(tokenizer, test, "plain", ShotSampler(splits.train, 5, seed=7))
    assert a == b
    assert a != c


def test_k_larger_than_the_pool_is_an_error():
    import pytest

    pool = [Example("q1", "a #### 1", "1"), Example("q2", "a #### 2", "2")]
    with pytest.raises(ValueError, match="num_fewshot=5 is larger than the 2 training examples"):
        ShotSampler(pool, 5, seed=0)
