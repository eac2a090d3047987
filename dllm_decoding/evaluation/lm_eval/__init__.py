"""lm-evaluation-harness integration: the ``dllm`` model, our reference tasks as lm-eval tasks,
and the summary of results files (docs/lm-eval.md).

>>> from dllm_decoding.evaluation.lm_eval import simple_evaluate   # registers the "dllm" model
>>> results = simple_evaluate(model_args="pretrained=reference,strategy=credit_decoding",
...                           tasks=["dllm_copy"], limit=8)
>>> results["results"]["dllm_copy"]["acc,none"], results["config"]["dllm"]["tasks"]["dllm_copy"]["nfe_mean"]

lm-eval is an optional dependency (``pip install -e ".[eval]"``): the modules that need it import
it on first use and name that command when it is missing. ``options`` and ``report`` work without it.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from ...core.errors import ConfigError

__all__ = ["TASKS_DIR", "MissingDependency", "require_lm_eval", "simple_evaluate", "DllmLM", "MODEL_NAME"]

#: the lm-eval task directory shipped as package data (YAML + JSONL + loader.py)
TASKS_DIR = Path(str(resources.files(__name__).joinpath("tasks")))


class MissingDependency(ConfigError, ImportError):
    """An optional dependency is not installed."""


def require_lm_eval() -> Any:
    """The ``lm_eval`` package, or a MissingDependency naming the install command."""
    try:
        import lm_eval
        import lm_eval.models  # noqa: F401  (registers lm-eval's own models before ours: it scans no entry points)
    except ImportError as exc:
        raise MissingDependency(f"lm-evaluation-harness is not installed ({exc}); install the eval extra: "
                                f"pip install -e \".[eval]\" (from a clone) or pip install \"dllm-decoding[eval]\"") from None
    return lm_eval


def __getattr__(name: str) -> Any:
    # the model and the harness helpers import lm-eval: only when asked for
    if name in ("DllmLM", "MODEL_NAME"):
        from . import model

        return getattr(model, name)
    if name == "simple_evaluate":
        from .harness import simple_evaluate

        return simple_evaluate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
