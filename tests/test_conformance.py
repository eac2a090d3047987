"""The conformance suite over every registered strategy preset (built-in and plugin ones)."""

import dllm_decoding as dd
from dllm_decoding.testing import StrategyConformance

for _name in dd.list_strategies():
    globals()[f"TestConformance_{_name}"] = type(
        f"TestConformance_{_name}", (StrategyConformance,), {"strategy": _name})


class TestConformanceCreditThenFactor(StrategyConformance):
    """A composition no preset ships: credit fusion in front of Fast-dLLM's factor rule."""

    strategy = {"fuse": [{"use": "credit"}], "select": {"use": "factor", "factor": 1.0}}
