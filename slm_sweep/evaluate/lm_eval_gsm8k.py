"""Run lm-evaluation-harness's own gsm8k task (HF backend) on an in-memory model and local GSM8K files.

The task is lm-eval's ``gsm8k.yaml`` unchanged except for where its documents come from: a task file in a
temporary folder includes it and points ``dataset_path: json`` at ``<data_root>/gsm8k/{train,test}.jsonl``.
The reference side of the parity test (tests/test_lm_eval_parity.py) and of ``bench/eval_speed.py``; needs the
``dev`` extra (lm-eval), imported only by them.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

TASK_NAME = "gsm8k_local"
FILTERS = {"strict": "strict-match", "flexible": "flexible-extract"}


@dataclass
class HarnessRun:
    prompts: list[str]            # the context lm-eval gave the model, per document
    outputs: list[str]            # the raw generation after lm-eval cut it at its stop strings
    extracted: dict[str, list]    # filter mode -> answer lm-eval extracted per document ("[invalid]" when none)
    correct: dict[str, list]      # filter mode -> exact_match per document (0.0 or 1.0)
    accuracy: dict[str, float]    # filter mode -> exact_match over the documents
    seconds: float                # wall time of lm_eval.simple_evaluate
    version: str                  # lm-eval's version
    task_version: float | None    # the gsm8k task's metadata version


def gsm8k_task_file(folder: Path, data_root: Path) -> Path:
    """A task yaml that is lm-eval's gsm8k reading the local JSONL files."""
    import lm_eval

    upstream = Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml"
    data = Path(data_root).resolve() / "gsm8k"
    lines = [
        f"include: {json.dumps(str(upstream))}",
        f"task: {TASK_NAME}",
        "tag: []",
        "dataset_path: json",
        "dataset_name: null",
        "dataset_kwargs:",
        "  data_files:",
        f"    train: {json.dumps(str(data / 'train.jsonl'))}",
        f"    test: {json.dumps(str(data / 'test.jsonl'))}",
    ]
    path = folder / f"{TASK_NAME}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_lm_eval_gsm8k(model, tokenizer, data_root: Path, limit: int, batch_size: int | str = 1,
                      max_gen_toks: int | None = None, apply_chat_template: bool = False) -> HarnessRun:
    """lm-eval's gsm8k on the first ``limit`` test questions with its default seeds and generation settings
    (``max_gen_toks`` overrides the task's 256 new tokens); ``apply_chat_template`` as the CLI's
    ``--apply_chat_template --fewshot_as_multiturn``."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory(prefix="lm_eval_task_") as folder:
        gsm8k_task_file(Path(folder), data_root)
        manager = TaskManager(include_path=folder, include_defaults=False)
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        start = time.perf_counter()
        result = lm_eval.simple_evaluate(model=lm, tasks=[TASK_NAME], limit=limit, log_samples=True,
                                         task_manager=manager, apply_chat_template=apply_chat_template,
                                         fewshot_as_multiturn=apply_chat_template,
                                         gen_kwargs={"max_gen_toks": max_gen_toks} if max_gen_toks else None)
        seconds = time.perf_counter() - start
    return _harness_run(result, seconds)


def _harness_run(result: dict, seconds: float) -> HarnessRun:
    import lm_eval

    samples = sorted(result["samples"][TASK_NAME], key=lambda s: s["doc_id"])
    by_filter = {mode: [s for s in samples if s["filter"] == name] for mode, name in FILTERS.items()}
    first = by_filter["strict"]
    scores = result["results"][TASK_NAME]
    return HarnessRun(
        prompts=[s["arguments"][0][0] for s in first],
        outputs=[s["resps"][0][0] for s in first],
        extracted={mode: [s["filtered_resps"][0] for s in rows] for mode, rows in by_filter.items()},
        correct={mode: [float(s["exact_match"]) for s in rows] for mode, rows in by_filter.items()},
        accuracy={mode: float(scores[f"exact_match,{name}"]) for mode, name in FILTERS.items()},
        seconds=seconds,
        version=getattr(lm_eval, "__version__", "unknown"),
        task_version=(result.get("versions") or {}).get(TASK_NAME),
    )
