"""torch.compile for training: which modules are compiled, and that evaluation gets the eager model back."""

import pytest
import torch

from slm_sweep.config import compose
from slm_sweep.methods import apply_method
from slm_sweep.models import load_model_and_tokenizer
from slm_sweep.train.compilation import (
    compile_in_place,
    compiled_modules,
    missing_toolchain,
    remove_compiled,
    repeated_layers,
    tracing_settings,
)


def tiny_model(method: str | None = None):
    model, _ = load_model_and_tokenizer(compose(["model=tiny"]).model)
    return apply_method(model, compose([f"method={method}"]).method) if method else model


@pytest.mark.parametrize("method", [None, "lora", "dora"])
def test_the_repeated_layers_are_the_decoder_layers_through_any_wrapper(method):
    model = tiny_model(method)
    layers = repeated_layers(model)
    assert [type(m).__name__ for m in layers] == ["LlamaDecoderLayer"] * 2
    assert layers == list(model.get_base_model().model.layers if method else model.model.layers)


def test_layers_scope_compiles_each_decoder_layer_and_removal_restores_the_eager_model():
    model = tiny_model("lora")
    record = compile_in_place(model, "layers")
    assert record == {"scope": "layers", "modules": 2, "module_class": "LlamaDecoderLayer", "input_grads": True}
    names = list(compiled_modules(model))
    assert len(names) == 2 and all(n.endswith(("layers.0", "layers.1")) for n in names)
    assert remove_compiled(model, record) == 2
    assert compiled_modules(model) == {}
    assert remove_compiled(model) == 0


def test_while_compiled_peft_reads_a_plain_weight_without_the_test_dynamo_cannot_trace():
    """peft reads DoRA's base weight through dequantize_module_weight, whose torchao test breaks every compiled
    layer's graph (the real compilation: tests/test_train_fit.py, -m slow). While compiled, a plain nn.Parameter is
    returned as peft returns it; any other weight goes to peft's own function, which is back after removal."""
    import peft.tuners.lora.dora as dora

    original = dora.dequantize_module_weight
    model = tiny_model("dora")
    record = compile_in_place(model, "layers")
    reader = dora.dequantize_module_weight
    assert reader is not original and reader.__wrapped__ is original
    linear = torch.nn.Linear(2, 2)
    assert reader(linear) is linear.weight is original(linear)

    class Quantized(torch.nn.Module):  # an HQQ-style layer: peft dequantizes it
        W_q = torch.zeros(1)

        def dequantize(self):
            return "dequantized"

    assert reader(Quantized()) == "dequantized" == original(Quantized())
    remove_compiled(model, record)
    assert dora.dequantize_module_weight is original


def first_layer_input(model, **forward) -> torch.Tensor:
    seen = []
    hook = repeated_layers(model)[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    model(input_ids=torch.tensor([[1, 2, 3]]), **forward)
    hook.remove()
    return seen[0]


def test_with_frozen_embeddings_every_layer_input_needs_a_gradient_while_compiled():
    """Otherwise the first layer would get a compiled graph of its own (its input needing no gradient)."""
    model = tiny_model("lora")
    assert not first_layer_input(model).requires_grad
    record = compile_in_place(model, "layers")
    with torch.compiler.set_stance("force_eager"):
        assert first_layer_input(model).requires_grad
    remove_compiled(model, record)
    assert not first_layer_input(model).requires_grad


def test_full_fine_tuning_needs_no_input_gradient_hook():
    model = tiny_model("full")
    assert compile_in_place(model, "layers")["input_grads"] is False


def test_model_scope_compiles_the_whole_forward_with_each_layer_marked_as_a_region_until_removal():
    model = tiny_model("lora")
    record = compile_in_place(model, "model")
    assert record == {"scope": "model", "modules": 1, "module_class": "PeftModelForCausalLM", "input_grads": False,
                      "layer_regions": 2}
    assert list(compiled_modules(model)) == [""]
    assert all("forward" in vars(layer) for layer in repeated_layers(model))
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.compiler.set_stance("force_eager"):  # a region is plain code outside a compiled frame
        eager_loss = model(input_ids=ids, labels=ids).loss
    remove_compiled(model, record)
    assert not any("forward" in vars(layer) for layer in repeated_layers(model))
    assert model(input_ids=ids, labels=ids).loss == eager_loss

    unrolled_model = tiny_model()
    unrolled = compile_in_place(unrolled_model, "model", regions=False)
    assert "layer_regions" not in unrolled
    remove_compiled(unrolled_model, unrolled)


def test_a_model_without_marked_layers_is_compiled_whole():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    assert compile_in_place(model, "layers")["scope"] == "model"
    assert list(compiled_modules(model)) == [""]


def test_a_compile_mode_is_recorded_and_one_replaying_graphs_needs_the_model_scope():
    model = tiny_model()
    assert compile_in_place(model, "model", "reduce-overhead")["mode"] == "reduce-overhead"
    assert compile_in_place(tiny_model(), "layers", "max-autotune-no-cudagraphs")["mode"] == (
        "max-autotune-no-cudagraphs")
    with pytest.raises(ValueError, match="trainer.compile_mode=reduce-overhead replays CUDA graphs, which needs "
                                         "trainer.compile_scope=model"):
        compile_in_place(tiny_model(), "layers", "reduce-overhead")
    with pytest.raises(ValueError, match="trainer.compile_mode='fast' is not one of: default, reduce-overhead"):
        compile_in_place(tiny_model(), "model", "fast")


def test_the_cudagraphs_backend_is_recorded_needs_the_model_scope_and_takes_no_mode():
    assert compile_in_place(tiny_model(), "model", backend="cudagraphs")["backend"] == "cudagraphs"
    assert "backend" not in compile_in_place(tiny_model(), "model")  # inductor, the default, is not written
    with pytest.raises(ValueError, match="trainer.compile_backend=cudagraphs replays CUDA graphs, which needs "
                                         "trainer.compile_scope=model"):
        compile_in_place(tiny_model(), "layers", backend="cudagraphs")
    with pytest.raises(ValueError, match="trainer.compile_mode=reduce-overhead is a mode of the inductor backend"):
        compile_in_place(tiny_model(), "model", "reduce-overhead", backend="cudagraphs")
    with pytest.raises(ValueError, match="trainer.compile_backend='aot_eager' is not one of: inductor, cudagraphs"):
        compile_in_place(tiny_model(), "model", backend="aot_eager")


@pytest.mark.slow  # compiles the tiny model (7-11 s); `make test-slow` runs it
def test_the_cudagraphs_backend_traces_each_shape_on_its_own_up_to_the_shapes_a_config_can_meet():
    """torch's cudagraphs backend fails on a second shape of a graph traced with dynamic shapes (pytorch#131009;
    on an H200: "The size of tensor a (256) must match the size of tensor b (384)"), so it traces static ones: one
    graph per sequence length, and ``tracing_settings`` lifts Dynamo's recompile limit to the shapes the trainer
    config can meet (past the limit a new shape would run eagerly, with a warning only). Inductor keeps dynamic
    shapes."""
    import torch._dynamo.config
    from torch._dynamo.utils import counters

    model = tiny_model("lora")
    record = compile_in_place(model, "model", backend="cudagraphs")
    assert record["static_shapes"] is True
    assert "static_shapes" not in compile_in_place(tiny_model(), "model")
    counters.clear()
    # Dynamo's own limit held at 2: the third length is traced because tracing_settings lifts it to 3
    with torch._dynamo.config.patch(recompile_limit=2), tracing_settings(static_shapes=3):
        for length in (8, 16, 24, 16):
            ids = torch.randint(3, 100, (2, length))
            model(input_ids=ids, labels=ids).loss.backward()
    remove_compiled(model, record)
    assert counters["stats"]["unique_graphs"] == 3


def traces_of_one_layer(model) -> int:
    """How many times Dynamo hands the first layer's graph to a backend (one per trace) in a training step: the
    layer traced with no code generation (the real compilation: tests/test_train_fit.py)."""
    from torch._dynamo.backends.debugging import aot_eager

    traces = []

    def counting(graph, inputs):
        traces.append(graph)
        return aot_eager(graph, inputs)

    torch._dynamo.reset()
    for layer in repeated_layers(model):
        layer._compiled_call_impl = None
    repeated_layers(model)[0].compile(backend=counting, dynamic=True)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=ids, labels=ids).loss.backward()
    return len(traces)


@pytest.mark.slow  # compiles the tiny model (7-11 s); `make test-slow` runs it
def test_float_constants_are_specialized_while_training_so_that_dynamo_traces_once():
    """Traced as symbols (dynamic shapes), the modules' float constants (norm epsilons, LoRA's scaling) sent
    Dynamo through a second trace of every graph (torch 2.13); fit() trains a compiled model under
    tracing_settings(), which specialize them."""
    import torch._dynamo.config

    model = tiny_model("lora")
    with tracing_settings():
        assert torch._dynamo.config.specialize_float is True
        assert traces_of_one_layer(model) == 1
    assert torch._dynamo.config.specialize_float is False
    assert traces_of_one_layer(model) == 2
    remove_compiled(model)


def test_an_unknown_scope_is_named_with_the_allowed_ones():
    with pytest.raises(ValueError, match="trainer.compile_scope='blocks' is not one of: layers, model"):
        compile_in_place(tiny_model(), "blocks")


def test_each_compiled_model_starts_from_an_empty_dynamo_cache():
    """Dynamo keeps the compiled graphs on the code of the layers' forward, which all models of the class share:
    graphs an earlier cell of the same process left there would count towards this one's recompile_limit."""
    from torch._C._dynamo.eval_frame import _debug_get_cache_entry_list

    earlier = tiny_model()
    layer = repeated_layers(earlier)[0]
    layer.compile(backend="eager", dynamic=True)  # no code generation: fast
    with torch.no_grad():
        earlier(input_ids=torch.tensor([[1, 2, 3]]))
    forward = type(layer).forward.__code__
    assert _debug_get_cache_entry_list(forward)

    compile_in_place(tiny_model(), "layers")
    assert _debug_get_cache_entry_list(forward) == []


def test_without_a_c_compiler_training_is_not_compiled_and_the_record_says_why(monkeypatch, tmp_path):
    assert missing_toolchain() is None  # this machine builds compiled kernels
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no cc, gcc or clang
    model = tiny_model("lora")
    record = compile_in_place(model, "layers")
    assert record == {"skipped": "no C compiler (cc, gcc or clang on PATH, or CC)"}
    assert compiled_modules(model) == {} and remove_compiled(model, record) == 0
