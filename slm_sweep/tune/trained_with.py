"""What a search trained and scored with (``tuned_under``: a table entry's ``trained_with``), and the guards
that refuse a tuned rate searched otherwise than a cell trains and is scored: ``check_tuned_under`` before
anything loads, ``check_tuned_data`` once the cell's keys are computed."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from slm_sweep.config import ConfigError
from slm_sweep.scoring import accuracy_key
from slm_sweep.tune.table import lookup, read_table, search_record

# model settings that do not change the weights a rate is tuned for (where files sit, the table's own key)
_NOT_THE_WEIGHTS = ("name", "gguf_dir", "gguf_package")
# where the weights were read from: left out where the training key says which weights they are, so that the
# same weights in another folder are the same, and other weights in the same folder are not
WEIGHTS_PLACE = ("model.id", "model.revision")
# what the model's identity adds to its settings: the weights resolved, and how a GGUF file was converted
_RESOLVED_MODEL = ("weights", "conversion")
# settings a table's trained_with holds since they were added: an older table is checked without them (its rate
# is taken as chosen under the cell's own settings of that kind, as before they were recorded)
_LATER_SETTINGS = ("model.", "dataset.dedup.", "data.", "model.weights", "model.conversion", "trainer.strategy",
                   "trainer.world_size", "code.training_edited", "code.optimizer", "code.callbacks", "eval.stop",
                   "eval.generation_config", "code.scoring", "code.metric_modules")
# What a record's scored_with (identity.scored_with: how its answers were generated and scored, the split aside)
# says beyond its config's eval settings, and the setting each is compared as: the scoring code's version and the
# hash of its sources where edited from that version's, the code of the metric modules it scored with, and the
# dtype generation ran in as resolved (eval.dtype=auto is bfloat16 on one GPU, float16 on an older one). Another
# entry of scored_with is compared between candidates as scored_with.<entry>. Unknown for a cell that failed before
# computing its keys.
_SCORED_AS = {"scoring": "code.scoring", "edited_sources": "code.scoring_edited",
              "metric_modules": "code.metric_modules", "dtype": "eval.dtype_resolved"}
# scored_with's entries that the config's eval settings give too (eval.<entry>, training_settings)
_SCORED_IN_CONFIG = ("split", "max_new_tokens", "stop", "generation_config")
# The eval settings a table's trained_with keeps (tuned_under): every one the validation scores depend on, but the
# split (the search scores the validation split, the cell the test split); with the scoring code (code.scoring*,
# code.metric_modules where the metric chosen on is a module's), a cell compares them before anything loads.
_KEPT_SCORING = ("eval.dtype", "eval.max_new_tokens", "eval.stop", "eval.generation_config")
# what only a cell's training key records (_keyed_settings), unknown for a cell that failed before computing it
FROM_KEYS = ("code.", "data.", "model.weights", "model.conversion", "trainer.world_size")
# of those, what a cell knows only once its data is loaded and its model's weights resolved: compared then
# (check_tuned_data); its code version and edited sources are compared before anything loads
_ONCE_KEYED = ("data.", "model.weights", "model.conversion")
_PROCESSES = "trainer.world_size"
# recorded since the training code's version is: a table without it was written before, and is read without them
_RECORDED_WITH_CODE = ("code.", "callbacks.", "eval.dtype", "eval.max_new_tokens", "dataset.test_size")


def tuned_under(record: Mapping[str, Any], metric: str | None = None) -> dict[str, Any]:
    """The settings a searched rate was chosen under that a cell training at it must share: its training key's
    parts but the rate, the seed and the library versions (the model's settings and the weights they resolve to,
    the method, the trainer's numeric settings and strategy family, the processes, the training data and the
    examples, the prompt, the callbacks that change the weights, the training code's version and edited sources),
    and the scoring the rates were compared by: every setting of a cell's config the validation scores depend on
    (``eval.dtype``, ``eval.max_new_tokens``, ``eval.stop``, ``eval.generation_config``) and the scoring code that
    computed them (``code.scoring``, ``code.scoring_edited``; ``code.metric_modules`` unless ``metric``, the score
    chosen on, is a built-in metric, which no metric module changes). Not the split scored (the search scores the
    validation split, the cell the test split), nor what a cell knows only once it generates (the dtype ``auto``
    resolves to). ``record``: a result.json's ``config`` (and ``identity``: its ``parts``, ``prompt_style``, the
    style as keyed, and ``scored_with``)."""
    modules = metric is None or not _built_in_metric(metric)
    return {k: v for key, value in training_settings(record).items()
            if (not key.startswith(("eval.", "scored_with.")) or key in _KEPT_SCORING)
            and key != "dataset.test_split" and (modules or key != "code.metric_modules")
            for k, v in _flat(key, value).items()}


def training_settings(record: Mapping[str, Any]) -> dict[str, Any]:
    """What a search cell trained and scored with, apart from its learning rate and seed: its training key's parts
    (``_keyed_settings`` and the settings each part is computed from) and the scoring the rates were compared by
    (its eval settings and its ``scored_with``: the scoring code's version and edited sources, its metric modules,
    the dtype generation ran in). Candidates compared against each other must agree on all of it."""
    from slm_sweep.data.specs import dedup_settings
    from slm_sweep.identity import (
        EVAL_SCORING_KEYS,
        method_identity,
        strategy_family,
        trainer_identity,
        weight_changing_callbacks,
    )

    config = record.get("config") or {}
    keyed = _keyed_settings(training_parts(record))
    method = {k: v for k, v in method_identity(config.get("method") or {}).items() if k != "lr"}
    dataset = config.get("dataset") or {}
    trainer = config.get("trainer") or {}
    # the weights trained from (a table is keyed by model.name, which another id, revision or dtype keeps)
    model = {f"model.{k}": v for k, v in (config.get("model") or {}).items()
             if k not in _NOT_THE_WEIGHTS and v is not None}
    if "model.weights" in keyed:
        model = {k: v for k, v in model.items() if k not in WEIGHTS_PLACE}
    return {
        **model,
        **{f"method.{k}": v for k, v in method.items()},
        **({f"dataset.dedup.{k}": v for k, v in dedup_settings(dataset).items()} if dataset.get("name") else {}),
        **{f"trainer.{k}": v for k, v in trainer_identity(trainer).items()},
        # FSDP's and DeepSpeed's bf16-mixed cast the parameters themselves to bf16, where one device and DDP
        # autocast over float32 weights: a rate searched on one is not tuned for the other
        "trainer.strategy": strategy_family(trainer),
        **{f"dataset.{k}": dataset.get(k) for k in ("val_size", "train_limit", "split_seed", "test_split",
                                                    "test_size")},
        # the scoring the rates were compared by: bf16 rounds away part of full fine-tuning's updates, which a
        # float32 paper cell keeps, so a rate chosen in bf16 is not the one chosen in float32; other stop strings,
        # generation settings or scoring code count other answers correct
        **{f"eval.{k}": _eval_setting(config.get("eval") or {}, k) for k in (*EVAL_SCORING_KEYS, "dtype")},
        **_scoring_settings(record_scoring(record)),
        # callbacks that change the weights (stochastic weight averaging) are in the cell's training key too
        **{f"callbacks.{name}": entry for name, entry in weight_changing_callbacks(config.get("callbacks")).items()},
        **keyed,
        # as the cell's keys have it (a system message the plain style leaves out is null), where result.json
        # records what its keys were computed from
        **{f"prompt.{k}": v for k, v in (_keyed_prompt(record) or {}).items()},
        # as the cell's keys have it, where result.json says (a record of a search)
        **({"prompt.style": style} if (style := (record.get("identity") or {}).get("prompt_style")) else {}),
    }


def training_parts(record: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """A record's training identity (``identity.parts.training``); None for a cell that failed before computing
    its keys."""
    parts = (record.get("identity") or {}).get("parts")
    training = parts.get("training") if isinstance(parts, Mapping) else None
    return training if isinstance(training, Mapping) else None


def _keyed_settings(training: Mapping[str, Any] | None) -> dict[str, Any]:
    """What a cell's training key holds that its config does not say, but the seed and the library versions: the
    weights its model resolves to, the training code's version (a rate searched before gradients or dropout
    changed is another search's) and the hash of its sources when edited, the code of an optimizer or callbacks
    from outside torch and Lightning, the examples trained on and scored (count and content hash), and how many
    processes trained (several cut the epoch's last step to a multiple of them). Nothing for a cell without keys
    (``training`` None)."""
    if training is None:
        return {}
    model = training.get("model") or {}
    return {
        **{f"model.{k}": model[k] for k in _RESOLVED_MODEL if k in model},
        "code.training": training.get("code"),
        "code.training_edited": training.get("edited_sources"),
        "code.optimizer": training.get("optimizer_source"),
        "code.callbacks": training.get("callback_sources") or None,
        "trainer.world_size": training.get("world_size") or 1,
        **{f"data.{k}": v for k, v in (training.get("data") or {}).items()},
    }


def record_scoring(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """How a record's answers were generated and scored (``identity.scored_with``; for a record written before it
    was, the same read from ``identity.parts.evaluation``); None for a cell that failed before computing its
    keys."""
    identity = record.get("identity")
    if not isinstance(identity, Mapping):
        return None
    if isinstance(identity.get("scored_with"), Mapping):
        return dict(identity["scored_with"])
    evaluation = (identity.get("parts") or {}).get("evaluation") if isinstance(identity.get("parts"), Mapping) \
        else None
    if not isinstance(evaluation, Mapping):
        return None
    return {"scoring": evaluation.get("scoring"),
            **({"edited_sources": evaluation["edited_sources"]} if evaluation.get("edited_sources") else {}),
            **{k: v for k, v in (evaluation.get("eval") or {}).items() if k != "split"}}


def _scoring_settings(scored: Mapping[str, Any] | None) -> dict[str, Any]:
    """A record's ``scored_with`` as settings (``_SCORED_AS``), but what its config's eval settings say; nothing
    when it is unknown."""
    if scored is None:
        return {}
    return {**{setting: scored.get(entry) for entry, setting in _SCORED_AS.items()},
            **{f"scored_with.{k}": v for k, v in scored.items() if k not in _SCORED_AS and k not in _SCORED_IN_CONFIG}}


def from_scoring(key: str) -> bool:
    """Whether ``key`` is one of what only a record's ``scored_with`` says (``_scoring_settings``)."""
    return key in _SCORED_AS.values() or key.startswith("scored_with.")


def _eval_setting(eval_cfg: Mapping[str, Any], key: str) -> Any:
    """``eval.<key>`` as the evaluation key has it: stop strings as a set (a generation is cut at the earliest)."""
    from slm_sweep.identity import stop_strings

    value = eval_cfg.get(key)
    return stop_strings(value) if key == "stop" and value is not None else value


def _keyed_prompt(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """The prompt settings as a record's training key has them (``identity.parts``); for a record without them
    (older, or failed before its keys were computed) its config's, with the system message a plain style leaves
    out as null; None without either."""
    prompt = (training_parts(record) or {}).get("prompt")
    if isinstance(prompt, Mapping):
        return dict(prompt)
    from slm_sweep.identity import prompt_identity

    prompt = (record.get("config") or {}).get("prompt")
    if not isinstance(prompt, Mapping):
        return None
    keyed = (record.get("identity") or {}).get("prompt_style") or prompt.get("style")
    return prompt_identity({**prompt, "style": keyed}, None)


def _built_in_metric(metric: str) -> bool:
    """Whether ``metric`` (``val_accuracy_<name>``) is a built-in metric's score, not a metric module's."""
    from slm_sweep import scoring

    built_in = getattr(scoring, "_BUILT_IN", None) or scoring.METRICS
    return metric.removeprefix("val_") in {accuracy_key(name) for name in built_in}


def _flat(key: str, value: Any) -> dict[str, Any]:
    """A setting as dotted keys, one per value of a mapping."""
    if isinstance(value, Mapping):
        return {k: v for name, item in value.items() for k, v in _flat(f"{key}.{name}", item).items()}
    return {key: value}


def check_tuned_under(cfg: DictConfig, table: Mapping[str, Any], path: Path) -> None:
    """Refuse a tuned rate that was searched under other training settings than the cell's (steps, batch,
    precision, strategy, rank, data, prompt, training code), or chosen on validation scores computed otherwise than
    the cell is scored (stop strings, generation config, max_new_tokens, dtype, scoring code): its result.json would
    say ``source: tuned`` of a rate tuned for something else. Refuse it too for a cell at one of the seeds it was searched on, which would report
    the search's winner. Tables written before the settings or seeds were recorded are taken as they are (but for a
    cell with ``tuning.on_missing=refuse``, which ``check_missing`` refuses)."""
    dataset, model, method = cfg.dataset.name, cfg.model.name, cfg.method.name
    if lookup(table, dataset, model, method) is None:
        return
    searched = search_record(table, dataset, model, method)
    seeds = searched.get("seeds")
    if isinstance(seeds, list) and any(str(seed) == str(cfg.seed) for seed in seeds):
        raise ConfigError(
            f"seed={cfg.seed}: the rate lr.{dataset}.{model}.{method} in {path} was chosen on seed(s) "
            f"{', '.join(map(str, seeds))}. Of the runs a search compares, the one chosen did best on validation, "
            "partly by the luck of its seed; this cell at the same rate and seed is that run again (the same "
            "weights) and would carry that luck into its test score. Report other seeds than the search's (the "
            "searches run seed=1000 unless told otherwise), or search again on seeds you do not report")
    recorded = searched.get("trained_with")
    if not isinstance(recorded, Mapping):
        return
    from slm_sweep.identity import code_and_process_parts

    # what the cell's training key will say of its code and processes, and its evaluation key of its scoring code;
    # what else only its keys say (data, resolved weights), check_tuned_data compares
    config = cell_config(cfg)
    modules = any(str(k).startswith("code.metric_modules") for k in recorded)
    cell = {"config": config, "identity": {"parts": {"training": code_and_process_parts(config)},
                                           "scored_with": _running_scoring(config, modules)}}
    recorded, here = _compared(recorded, tuned_under(cell), once_keyed=False)
    if counted_elsewhere(config["trainer"]):  # e.g. a SLURM grid's preflight on a login node: the cell checks
        recorded.pop(_PROCESSES, None)
        here.pop(_PROCESSES, None)
    if recorded.get("prompt.style") == "plain":  # a table written before the plain style's system message was null
        recorded = {**recorded, "prompt.system": here.get("prompt.system")}
    differing = _differences(recorded, here)
    if differing:
        scoring = [d.split(":")[0] for d in differing if d.startswith(("eval.", "code.scoring", "code.metric_modules"))]
        hint = (f" The rates were compared on validation scores computed otherwise than this cell is scored "
                f"({', '.join(scoring)}): the rate that won there need not win under this cell's scoring, as "
                "for another eval.max_new_tokens or eval.dtype.") if scoring else ""
        code = any(d.startswith(("code.scoring", "code.metric_modules")) for d in differing)
        again = (" For other scoring code, rerun the search with this code (`make paper-search` for "
                 "experiment=paper's cells: a cell whose weights were kept is re-scored, not trained again), then "
                 "the tune command.") if code else ""
        raise ConfigError(
            f"tuning.table: the rate lr.{dataset}.{model}.{method} in {path} was searched under other training "
            f"settings than this cell's ({'; '.join(differing)}).{hint}{again} Search again with this cell's "
            "settings (the search takes the same overrides: trainer=..., method.r=..., dataset.*, eval.*), or train "
            "at a rate of your choosing with tuning.lr=method method.lr=<rate>")


def cell_config(cfg: DictConfig) -> dict[str, Any]:
    """The parts of a composed cell that ``tuned_under`` reads, as result.json records them; ``prompt.style`` as
    the cell's keys have it (an explicit style that auto renders is auto)."""
    from slm_sweep.identity import auto_prompt_style, prompt_identity

    parts = {part: OmegaConf.to_container(cfg[part], resolve=True)
             for part in ("model", "method", "trainer", "dataset", "prompt", "eval", "callbacks")
             if cfg.get(part) is not None}
    if "prompt" in parts:
        parts["prompt"] = prompt_identity(parts["prompt"], auto_prompt_style(cfg))
    return parts


def _running_scoring(config: Mapping[str, Any], modules: bool) -> dict[str, Any]:
    """What a cell's ``scored_with`` will say of the code that scores it, as this process runs it: the scoring
    version, its sources' hash where edited from that version's, and (``modules``: only where the table records
    them, as importing them is not free) the code of the metric modules it scores with."""
    from slm_sweep.identity import (
        SCORING_SOURCES,
        SCORING_SOURCES_SHA256,
        SCORING_VERSION,
        edited_sources,
        metric_modules_identity,
    )

    edited = edited_sources(SCORING_SOURCES, SCORING_SOURCES_SHA256, SCORING_VERSION)
    scored = {"scoring": SCORING_VERSION, **({"edited_sources": edited} if edited else {})}
    if modules:
        from slm_sweep.scoring import metric_module_names

        scored.update(metric_modules_identity(metric_module_names((config.get("eval") or {}).get("metric_modules"))))
    return scored


def _compared(recorded: Mapping[str, Any], here: Mapping[str, Any],
              once_keyed: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The settings of a table entry (``recorded``) and of a cell (``here``) that a guard compares: what a cell
    knows only once it has computed its keys (``_ONCE_KEYED``, check_tuned_data), or the rest (check_tuned_under).
    Left out of ``here``: the settings the table was written before recording (``_LATER_SETTINGS``; the code
    version, scoring and callbacks before ``code.training``), and where the model's files sit when the table
    records which weights were searched on (``model.weights``)."""
    later = _LATER_SETTINGS + (() if "code.training" in recorded else _RECORDED_WITH_CODE)
    unrecorded = tuple(p for p in later if not any(k.startswith(p) for k in recorded))
    place = WEIGHTS_PLACE if "model.weights" in recorded else ()
    return ({k: v for k, v in recorded.items() if k.startswith(_ONCE_KEYED) == once_keyed},
            {k: v for k, v in here.items() if k.startswith(_ONCE_KEYED) == once_keyed
             and not k.startswith(unrecorded) and k not in place})


def _differences(searched: Mapping[str, Any], here: Mapping[str, Any]) -> list[str]:
    import json

    def plain(value: Any) -> str:
        return json.dumps(value, sort_keys=True)

    return [f"{key}: searched {plain(searched.get(key))}, here {plain(here.get(key))}"
            for key in sorted({*searched, *here}) if plain(searched.get(key)) != plain(here.get(key))]


def check_tuned_data(cfg: DictConfig, learning_rate: Mapping[str, Any] | None,
                     training: Mapping[str, Any] | None) -> None:
    """Refuse a tuned rate searched on other weights, examples or processes than the cell trains with, by what
    only its keys say (``_ONCE_KEYED``): the weights its model resolves to (a hub branch moved on, a folder
    retrained in place), the training and validation examples (a data file replaced or edited since the search,
    under the same settings); and the processes training runs in, which the config-time check
    (``check_tuned_under``) leaves out where they are counted on the machine that trains. ``training``: the cell's
    training identity (``identity.parts.training``), computed from the examples it loaded. Tables written before
    they recorded these are checked without them."""
    if not learning_rate or learning_rate.get("source") != "tuned" or not training:
        return
    parts = (cfg.dataset.name, cfg.model.name, cfg.method.name)
    recorded = search_record(read_table(learning_rate["table"]), *parts).get("trained_with")
    if not isinstance(recorded, Mapping):
        return
    here = {k: v for key, value in _keyed_settings(training).items() for k, v in _flat(key, value).items()}
    differing = _differences(*_compared(recorded, here, once_keyed=True))
    if _PROCESSES in recorded:
        differing += _differences({_PROCESSES: recorded[_PROCESSES]}, {_PROCESSES: here.get(_PROCESSES)})
    if not differing:
        return
    entry = f"the rate {'.'.join(['lr', *parts])} in {learning_rate['table']}"
    if all(d.startswith("data.") for d in differing):
        raise ConfigError(
            f"tuning.table: {entry} was searched on other examples than this cell loaded ({'; '.join(differing)}: "
            "examples counted, then a hash of their content): the data files changed since the search. Search "
            "again on these files, or train at a rate of your choosing with tuning.lr=method method.lr=<rate>")
    raise ConfigError(
        f"tuning.table: {entry} was searched under other training than this cell's keys record "
        f"({'; '.join(differing)}): the model's weights (the hub commit its revision points at, or its files' "
        "content hash) or the processes training runs in differ from the search's. Search again with this cell's "
        "model files and devices, or "
        "train at a rate of your choosing with tuning.lr=method method.lr=<rate>")


def counted_elsewhere(trainer: Mapping[str, Any]) -> bool:
    """Whether the processes ``trainer`` trains in are counted on the machine that trains (devices -1 or auto,
    every CUDA device there) and this one, without CUDA, cannot count them."""
    import torch

    return str(trainer.get("devices", 1)) in ("-1", "auto") and not torch.cuda.is_available()
