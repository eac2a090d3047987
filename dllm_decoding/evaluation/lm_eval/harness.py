"""Running lm-eval with the ``dllm`` model: the task checks made before any model loads, and
:func:`simple_evaluate` (lm-eval's, with our model registered and our tasks included)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ...core.errors import ConfigError
from . import TASKS_DIR, require_lm_eval
from .options import LmEvalOptions

#: the request types the dllm model answers (multiple_choice tasks send loglikelihood requests)
SUPPORTED_OUTPUT_TYPES = ("generate_until", "loglikelihood", "multiple_choice")


def include_paths(extra: str | Path | Sequence[str | Path] | None = None) -> list[str]:
    """Our task directory first, then the caller's."""
    if extra is None:
        extra = []
    elif isinstance(extra, (str, Path)):
        extra = [extra]
    return [str(TASKS_DIR), *(str(p) for p in extra)]


def task_manager_for(tasks: Iterable[str], include_path: Any = None, metadata: Mapping[str, Any] | None = None):
    """A TaskManager that knows our tasks. When every requested name is one of ours it skips
    indexing lm-eval's ~15,000 built-in tasks (about 10 s)."""
    require_lm_eval()
    from lm_eval.tasks import TaskManager

    ours = TaskManager(include_path=include_paths(include_path), include_defaults=False, metadata=dict(metadata or {}))
    names = [t for t in tasks if isinstance(t, str)]
    if names and all(ours.match_tasks([n]) for n in names):
        return ours
    return TaskManager(include_path=include_paths(include_path), metadata=dict(metadata or {}))


def check_tasks(task_manager: Any, tasks: Iterable[Any], options: LmEvalOptions,
                gen_kwargs: Mapping[str, Any] | None = None) -> list[str]:
    """The leaf task names ``tasks`` expand to, after checking from their configs (nothing is
    downloaded or loaded) that the dllm model can answer each: a supported output type, and a
    ``max_gen_toks`` that ``gen_length`` covers. Each problem is one ConfigError."""
    leaves: dict[str, dict[str, Any]] = {}
    for spec in tasks:
        if isinstance(spec, dict):
            leaves[str(spec.get("task"))] = spec
            continue
        if not isinstance(spec, str) or spec.endswith(".yaml"):
            continue  # a task object or a YAML path: lm-eval reads it itself
        names = task_manager.match_tasks([spec])
        if not names:
            close = difflib.get_close_matches(spec, task_manager.all_tasks + task_manager.all_groups
                                              + task_manager.all_tags, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else " (lm-eval ls tasks lists them)"
            raise ConfigError(f"--tasks: unknown task {spec!r}{hint}")
        for name in names:
            _expand(task_manager, name, leaves, set())
    for name, cfg in leaves.items():
        output_type = cfg.get("output_type")
        if output_type is not None and output_type not in SUPPORTED_OUTPUT_TYPES:
            raise ConfigError(f"task {name!r} has output_type {output_type!r}, which the dllm model does not support "
                              f"(it answers {', '.join(SUPPORTED_OUTPUT_TYPES)}); leave it out of --tasks")
        if output_type == "generate_until":
            generation = {**(cfg.get("generation_kwargs") or {}), **(gen_kwargs or {})}
            max_gen_toks = generation.get("max_gen_toks")
            if isinstance(max_gen_toks, str) and max_gen_toks.strip().isdigit():
                max_gen_toks = int(max_gen_toks)
            gen_length = options.gen_length_for(max_gen_toks, name)
            options.strategy_for(gen_length)
    return list(leaves)


def _expand(task_manager: Any, name: str, leaves: dict[str, dict[str, Any]], seen: set[str]) -> None:
    if name in seen:
        return
    seen.add(name)
    entry = task_manager.task_index.get(name)
    if entry is None:
        return
    kind = entry.kind.name
    if kind == "TAG":
        for member in sorted(entry.tags):
            _expand(task_manager, member, leaves, seen)
    elif kind == "GROUP":
        members = (entry.cfg or {}).get("task") or []
        for member in members if isinstance(members, list) else [members]:
            if isinstance(member, dict):
                leaves[str(member.get("task"))] = member
            else:
                _expand(task_manager, str(member), leaves, seen)
    else:
        leaves[name] = dict(entry.cfg or {})


def simple_evaluate(*, model_args: str | Mapping[str, Any] = "", tasks: Sequence[Any], include_path: Any = None,
                    gen_kwargs: str | Mapping[str, Any] | None = None, task_manager: Any = None,
                    **kwargs: Any) -> dict[str, Any] | None:
    """``lm_eval.simple_evaluate(model="dllm", ...)`` with our tasks included and every check made
    before any model loads: model_args (unknown keys, overrides that do not fit the strategy) and
    the tasks (output types, max_gen_toks). Returns lm-eval's results (None on ranks other than
    0); ``results["config"]["dllm"]["tasks"]`` holds the per-task NFE, tokens per forward,
    tokens/s and resolved strategy. Other keyword arguments go to lm-eval unchanged."""
    lm_eval = require_lm_eval()
    from lm_eval.utils import simple_parse_args_string

    from .model import MODEL_NAME

    parsed = simple_parse_args_string(model_args) if isinstance(model_args, str) else dict(model_args)
    extra = {k: kwargs[k] for k in ("batch_size", "device") if kwargs.get(k) is not None}
    options = LmEvalOptions.from_model_args({**extra, **parsed})
    if isinstance(gen_kwargs, str):
        gen_kwargs = simple_parse_args_string(gen_kwargs)
    if task_manager is None:
        task_manager = task_manager_for(tasks, include_path, metadata=parsed)
    check_tasks(task_manager, tasks, options, gen_kwargs)
    return lm_eval.simple_evaluate(model=MODEL_NAME, model_args=parsed, tasks=list(tasks), gen_kwargs=gen_kwargs,
                                   task_manager=task_manager, **kwargs)
