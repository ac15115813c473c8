"""torch.compile for training, and its removal before evaluation.

``trainer.compile_scope=layers`` (default) compiles each decoder layer in place: the layers share one class and
one code path, so one compiled graph serves all of them and compilation takes about as long for 30 layers as for
one. With frozen embeddings (LoRA, DoRA) the first layer's input would need no gradient and the others' would,
which makes a second graph; the embeddings' output is marked as needing one instead (transformers'
``enable_input_require_grads``), at the cost of the first layer's input gradient. ``model`` compiles the whole
forward as one graph, whose trace grows with the layers unless they are regions (below; SmolLM2-135M with
Inductor on this CPU, unrolled: eleven minutes against under one for the layers scope, measured before the single
trace; docs/performance.md).
``trainer.compile_mode=reduce-overhead`` with the model scope also records the step's forward and backward as CUDA
graphs and replays them: a small model's step on a GPU is bound by the host's
dispatch of its kernels (docs/performance.md, "First run on an H200"), which a replay leaves out. A graph is
recorded per micro-batch shape (``trainer.pad_to_multiple_of`` bounds their number). ``trainer.compile_backend=
cudagraphs`` replays the traced step's own kernels as CUDA graphs without generating fused ones: the warm-up is
the trace alone, one per micro-batch shape (that backend fails on a second shape of a graph traced with dynamic
ones, pytorch#131009, so it traces static ones: ``trainer.pad_to_multiple_of`` equal to ``max_length`` makes one
length of all). Neither is offered with the layers scope, where each layer's replay would overwrite the output
the next layer reads.

With the model scope each decoder layer is marked as a nested compile region (``torch.compiler.
nested_compile_region``; ``trainer.compile_regions``): Dynamo traces one layer and stamps it out for the others
instead of unrolling all of them (SmolLM2-135M, LoRA, cudagraphs backend, on this CPU: a warm-up of 40 s against
72 s, measured before static shapes; docs/performance.md). A graph break inside a region is an error, not a
break: the layers compile without any (``graph_breaks``), and with gradient checkpointing or a quantized model
they are traced unrolled.

``fit`` trains a compiled model under ``tracing_settings()``, which specialize on the modules' float constants
(norm epsilons, attention and LoRA scalings, dropout probabilities): traced as symbols, as torch.compile does with
dynamic shapes, they made Dynamo trace every graph twice (a restart in its float-to-tensor pass), doubling the
trace (docs/performance.md). Before evaluation and validation the compiled forwards are set aside (validation
runs under the force-eager stance).

Compilation happens in place (``nn.Module.compile``), so parameter names, checkpoints and adapter merging are
those of the eager model. Before evaluation the compiled forwards are removed: generation then runs the eager
modules (whose shapes, grad mode and merged adapters would otherwise recompile), and CUDA graphs record plain
kernels.
"""

from __future__ import annotations

import logging
import os
import shutil
import sysconfig
from collections import Counter
from pathlib import Path

from torch import nn

from slm_sweep.config import (
    COMPILE_BACKENDS,
    COMPILE_MODES,
    COMPILE_SCOPES,
    backend_mode_problem,
    graph_replaying_setting,
    graph_scope_problem,
)

log = logging.getLogger(__name__)


def repeated_layers(model: nn.Module) -> list[nn.Module]:
    """The model's decoder layers: modules of the classes its ``_no_split_modules`` names (transformers marks
    its repeated blocks so), found through any wrapper (PEFT's included)."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    return [m for m in model.modules() if type(m).__name__ in names]


def missing_toolchain() -> str | None:
    """Why torch.compile's kernels could not be built here, or None: on first use Inductor builds them (Triton's
    launcher on a GPU, C++ on the CPU) with the system's C compiler against Python's headers, and a machine
    without either would fail every cell at its first training step."""
    if not (os.environ.get("CC") or any(shutil.which(name) for name in ("cc", "gcc", "clang"))):
        return "no C compiler (cc, gcc or clang on PATH, or CC)"
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not headers.is_file():
        return f"no Python headers ({headers} is missing)"
    return None


# peft's LoRA-family layers read a base weight through peft.utils.integrations.dequantize_module_weight, whose test
# for a torchao weight (type(weight).__module__.startswith) Dynamo cannot trace: every DoRA layer's forward broke
# its compiled graph there (20 graph breaks in the tiny model's 2 layers, none with LoRA). While a model is compiled
# the modules that call it get a version that returns a plain nn.Parameter as peft does, without that test, and
# hands every other weight (bitsandbytes, torchao, HQQ) to peft's own.
_PEFT_WEIGHT_READERS = ("peft.tuners.lora.dora", "peft.tuners.lora.variants")
_ORIGINAL_WEIGHT_READERS: dict[str, object] = {}


def _plain_weight_first(original):
    def dequantize_module_weight(module: nn.Module):
        weight = getattr(module, "weight", None)
        if type(weight) is nn.Parameter and not hasattr(module, "W_q"):
            return weight
        return original(module)

    dequantize_module_weight.__wrapped__ = original
    return dequantize_module_weight


def _read_plain_weights_traceably() -> None:
    import importlib

    for name in _PEFT_WEIGHT_READERS:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        original = getattr(module, "dequantize_module_weight", None)
        if original is not None and name not in _ORIGINAL_WEIGHT_READERS:
            _ORIGINAL_WEIGHT_READERS[name] = original
            module.dequantize_module_weight = _plain_weight_first(original)


def _restore_weight_readers() -> None:
    import sys

    for name, original in _ORIGINAL_WEIGHT_READERS.items():
        sys.modules[name].dequantize_module_weight = original
    _ORIGINAL_WEIGHT_READERS.clear()


def tracing_settings(static_shapes: int | None = None):
    """Dynamo's settings while the compiled model trains (a context manager): the modules' float constants
    specialized (see the module's docstring), and with ``static_shapes`` (the shapes a model traced with static
    ones can meet, ``config.static_shape_count``) a recompile limit that lets each be traced: past Dynamo's default
    of 8 a new shape would run eagerly, with a warning only."""
    import torch._dynamo.config

    limits = {"recompile_limit": max(torch._dynamo.config.recompile_limit, static_shapes)} if static_shapes else {}
    return torch._dynamo.config.patch(specialize_float=True, **limits)


def _mark_layer_regions(layers: list[nn.Module]) -> int:
    """Mark each layer's forward as a nested compile region, one per layer class (so that its trace is reused);
    return how many were marked (none where torch has no such regions). A layer whose forward is already its
    own (a hook's wrapper) is left as it is."""
    import types

    import torch

    mark = getattr(torch.compiler, "nested_compile_region", None)
    if mark is None:
        return 0
    regions: dict[type, object] = {}
    layers = [layer for layer in layers if "forward" not in vars(layer)]
    for layer in layers:
        if type(layer) not in regions:
            regions[type(layer)] = mark(type(layer).forward)
            regions[type(layer)]._layer_region = True  # what remove_compiled looks for
        layer.forward = types.MethodType(regions[type(layer)], layer)
    return len(layers)


def compile_in_place(model: nn.Module, scope: str = "layers", mode: str | None = None,
                     backend: str = "inductor", regions: bool = True) -> dict:
    """Compile ``model`` for training (dynamic shapes: micro-batch shapes vary with the data; static ones with the
    cudagraphs backend, each traced on its own) with torch.compile's
    ``backend``, in its ``mode`` (None: its default), with the model scope its decoder layers as nested compile
    regions unless ``regions`` is false or the model is quantized (a quantized layer's kernels break the graph,
    which inside a region is an error); return what was compiled, for result.json: ``{"skipped": why}`` where
    this machine cannot build compiled kernels (training then runs eagerly, and says so)."""
    if scope not in COMPILE_SCOPES:
        raise ValueError(f"trainer.compile_scope={scope!r} is not one of: {', '.join(COMPILE_SCOPES)}")
    if mode is not None and mode not in COMPILE_MODES:
        raise ValueError(f"trainer.compile_mode={mode!r} is not one of: {', '.join(COMPILE_MODES)}")
    if backend not in COMPILE_BACKENDS:
        raise ValueError(f"trainer.compile_backend={backend!r} is not one of: {', '.join(COMPILE_BACKENDS)}")
    if backend_mode_problem(mode, backend):
        raise ValueError(backend_mode_problem(mode, backend))
    missing = missing_toolchain() if backend == "inductor" else None  # the cudagraphs backend builds no kernels
    if missing:
        log.warning("trainer.compile=true, but torch.compile cannot build kernels here: %s; training eagerly",
                    missing)
        return {"skipped": missing}
    layers = repeated_layers(model) if scope == "layers" else []
    # layers not found: compiled whole
    problem = graph_scope_problem(graph_replaying_setting(mode, backend), scope) if layers else None
    if problem:
        raise ValueError(problem)
    if scope == "layers" and not layers:
        log.warning("%s names no repeated layers (_no_split_modules): compiling the whole model",
                    type(model).__name__)
    # Dynamo keeps its compiled graphs on the code of the layers' forward, which every model of the class shares:
    # the cells of a sweep run in one process would pile up graphs (another LoRA rank, another model) until
    # recompile_limit, after which the layers would silently run eagerly. Each cell starts from a clean cache.
    import torch._dynamo

    torch._dynamo.reset()
    _read_plain_weights_traceably()
    quantized = getattr(model, "hf_quantizer", None) is not None
    marked = _mark_layer_regions(repeated_layers(model)) if scope == "model" and regions and not quantized else 0
    # torch's cudagraphs backend fails on the second shape of a graph traced with dynamic shapes ("The size of
    # tensor a (256) must match the size of tensor b (384)" on an H200; pytorch#131009): each shape is traced on
    # its own, and trainer.pad_to_multiple_of bounds how many there are (config.graph_replay_step_problem)
    static = backend == "cudagraphs"
    for module in layers or [model]:
        module.compile(dynamic=not static, backend=backend, **({"mode": mode} if mode else {}))
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    input_grads = bool(layers) and embeddings is not None and not embeddings.weight.requires_grad
    if input_grads:
        model.enable_input_require_grads()
    return {"scope": "layers" if layers else "model", "modules": len(layers) or 1,
            "module_class": type(layers[0]).__name__ if layers else type(model).__name__,
            "input_grads": input_grads, **({"mode": mode} if mode else {}),
            **({"backend": backend} if backend != "inductor" else {}), **({"static_shapes": True} if static else {}),
            **({"layer_regions": marked} if marked else {})}


def compile_counters() -> dict[str, Counter]:
    """Dynamo's counters in this process so far that say how compiled training ran: graph breaks by reason, the
    frames it tried and those it compiled, and the graphs the CUDA-graph trees skipped."""
    from torch._dynamo.utils import counters

    return {group: Counter(counters[group]) for group in ("graph_break", "frames", "inductor")}


def compile_figures_since(before: dict[str, Counter]) -> dict:
    """What compiled training did since ``before`` (``compile_counters()``), for result.json: graph breaks (a
    compiled layer that breaks runs as several graphs with eager code between them, which costs launches and
    compile time; peft's DoRA forward breaks in some releases), frames that failed to compile and ran eagerly
    (torch.compile's suppressed errors; the GPU check suppresses them), and graphs not replayed as CUDA graphs
    (``cudagraph_skips``: on a CPU always, on a GPU for a reason in the log)."""
    now = compile_counters()
    breaks = now["graph_break"] - before["graph_break"]
    frames = now["frames"] - before["frames"]
    failed = frames["total"] - frames["ok"]
    skips = (now["inductor"] - before["inductor"])["cudagraph_skips"]
    return {"graph_breaks": sum(breaks.values()),
            **({"graph_break_reasons": [reason[:200] for reason, _ in breaks.most_common(3)]} if breaks else {}),
            **({"failed_frames": failed} if failed else {}), **({"cudagraph_skips": skips} if skips else {})}


def compiled_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The modules of ``model`` (``model`` itself under "") that ``nn.Module.compile`` has compiled, by name."""
    return {name: m for name, m in model.named_modules() if getattr(m, "_compiled_call_impl", None) is not None}


def remove_compiled(model: nn.Module, compiled: dict | None = None) -> int:
    """Undo ``nn.Module.compile`` on ``model`` and every submodule, and the input-gradient hook that
    ``compile_in_place`` (whose record is ``compiled``) added; return how many modules were compiled."""
    modules = compiled_modules(model)
    for module in modules.values():
        module._compiled_call_impl = None
    for module in model.modules():  # the layers marked as regions get their class's forward back
        if getattr(getattr(vars(module).get("forward"), "__func__", None), "_layer_region", False):
            del module.forward
    _restore_weight_readers()
    if compiled and compiled.get("input_grads"):
        model.disable_input_require_grads()
    return len(modules)
