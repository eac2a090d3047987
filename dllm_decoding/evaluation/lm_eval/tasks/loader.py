"""Dataset loader and scorer of the dllm_* lm-eval tasks (their YAML names them with ``!function``).

lm-eval imports this file by path, so it uses absolute imports only, and reads its JSONL files
next to itself: a relative ``data_files`` path in the YAML would resolve against the working
directory instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dllm_decoding.tasks import Example, get_task

HERE = Path(__file__).resolve().parent


def load(task: str, **_metadata: Any):
    """``{"test": Dataset}`` of one task's shipped examples (lm-eval passes the run's metadata
    and model_args too: ignored)."""
    from datasets import Dataset, DatasetDict

    path = HERE / f"{task}.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return DatasetDict({"test": Dataset.from_list(rows)})


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """``acc``: the reference task's own check of the generated answer (any valid answer counts)."""
    prediction = results[0]
    return {"acc": float(get_task(doc["task"]).check(prediction, Example(doc["prompt"], doc["answer"])))}
