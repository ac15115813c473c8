"""The static engine's one-token attention (slm_sweep/evaluate/attention.py) against expanded keys and values."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from slm_sweep.evaluate.attention import NAME, decode_sdpa, stacked_gqa_decoding


def _expanded_reference(query, key, value, mask, scaling):
    """Every query head against its own copy of its group's keys and values (transformers' repeat_kv before 5.24)."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling)
    return out.transpose(1, 2)


class _Layer(torch.nn.Module):
    def __init__(self, groups):
        super().__init__()
        self.num_key_value_groups = groups


@pytest.mark.parametrize("heads,kv_heads", [(9, 3), (4, 1), (6, 2)])
def test_one_token_queries_of_a_group_attend_to_their_shared_keys_as_if_expanded(heads, kv_heads):
    torch.manual_seed(0)
    batch, columns, dim = 5, 11, 8
    query = torch.randn(batch, heads, 1, dim)
    key, value = torch.randn(batch, kv_heads, columns, dim), torch.randn(batch, kv_heads, columns, dim)
    mask = torch.rand(batch, 1, 1, columns) > 0.3
    mask[..., 0] = True  # every row sees a column
    out, weights = decode_sdpa(_Layer(heads // kv_heads), query, key, value, mask, scaling=dim ** -0.5)
    assert weights is None and out.shape == (batch, 1, heads, dim)
    torch.testing.assert_close(out, _expanded_reference(query, key, value, mask, dim ** -0.5), atol=1e-6, rtol=1e-5)


def test_prompts_and_per_head_masks_take_transformers_sdpa():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(0)
    layer = _Layer(3)
    key, value = torch.randn(2, 2, 7, 4), torch.randn(2, 2, 7, 4)
    prompt = torch.randn(2, 6, 7, 4)
    expected, _ = sdpa_attention_forward(layer, prompt, key, value, None, scaling=0.5, is_causal=True)
    assert torch.equal(decode_sdpa(layer, prompt, key, value, None, scaling=0.5, is_causal=True)[0], expected)
    per_head = torch.rand(2, 6, 1, 7) > 0.2
    per_head[..., 0] = True
    one = torch.randn(2, 6, 1, 4)
    expected, _ = sdpa_attention_forward(layer, one, key, value, per_head, scaling=0.5)
    assert torch.equal(decode_sdpa(layer, one, key, value, per_head, scaling=0.5)[0], expected)


def test_what_plain_attention_does_not_compute_is_left_to_transformers():
    """A soft cap on the scores is transformers' to apply or refuse, never silently dropped."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(0)
    layer = _Layer(3)
    query, key, value = torch.randn(2, 6, 1, 4), torch.randn(2, 2, 7, 4), torch.randn(2, 2, 7, 4)
    mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    try:
        expected = sdpa_attention_forward(layer, query, key, value, mask, scaling=0.5, softcap=30.0)[0]
    except Exception as refused:  # noqa: BLE001 - whatever transformers raises, decode_sdpa must raise too
        with pytest.raises(type(refused)):
            decode_sdpa(layer, query, key, value, mask, scaling=0.5, softcap=30.0)
    else:
        assert torch.equal(decode_sdpa(layer, query, key, value, mask, scaling=0.5, softcap=30.0)[0], expected)


def _gqa_model(attention="sdpa", tokenizer=None):
    torch.manual_seed(0)
    ids = ({"vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
           if tokenizer is not None else {"vocab_size": 96})
    config = LlamaConfig(hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=6,
                         num_key_value_heads=2, attn_implementation=attention, **ids)
    return LlamaForCausalLM(config).eval()


def test_the_attention_is_switched_for_the_block_only_and_for_sdpa_only():
    model = _gqa_model()
    with stacked_gqa_decoding(model):
        assert model.config._attn_implementation == NAME
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(RuntimeError, match="inside"), stacked_gqa_decoding(model):
        raise RuntimeError("inside")
    assert model.config._attn_implementation == "sdpa"
    eager = _gqa_model("eager")
    with stacked_gqa_decoding(eager):
        assert eager.config._attn_implementation == "eager"


def test_the_static_engine_decodes_a_grouped_query_model_as_model_generate_does():
    """A model with 6 query heads over 2 key/value heads, float32: the static loop (stacked attention in its
    one-token steps) and model.generate give the same tokens, and the static loop ran under the stacked
    attention (what the model was set to while answers were reported)."""
    from omegaconf import OmegaConf

    from slm_sweep.config import CONF_DIR
    from slm_sweep.evaluate.generate import generate
    from slm_sweep.models import load_model_and_tokenizer

    _, tokenizer = load_model_and_tokenizer(OmegaConf.load(CONF_DIR / "model" / "tiny.yaml"))
    model = _gqa_model(tokenizer=tokenizer)
    prompts = ["Question: 3 + 4 = ?\nAnswer:", "Question: a train leaves at 9 and arrives at 11?\nAnswer:", "Q: 7"]
    seen = []
    static = generate(model, tokenizer, prompts, max_new_tokens=10, engine="static", max_batch_size=2,
                      on_done=lambda idx, gens: seen.append(model.config._attn_implementation))
    plain = generate(model, tokenizer, prompts, max_new_tokens=10, engine="plain", max_batch_size=1)
    assert [g.text for g in static] == [g.text for g in plain]
    assert all(g.new_tokens == 10 for g in static)  # random weights: every row runs to the limit, nothing to hide
    assert set(seen) == {NAME} and model.config._attn_implementation == "sdpa"
