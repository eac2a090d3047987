"""Peak memory of a stretch of work.

On Linux the kernel's resident-set high-water mark is reset before each evaluation
(``/proc/self/clear_refs``), so ``peak_rss_mb`` is this evaluation's own peak and
``decode_peak_mb`` = peak - resident size at the start: the working memory of decoding
(logits, fused copies, credit tables, model activations). Where the reset is not allowed,
``peak_rss_mb`` is the process-lifetime ``ru_maxrss``, ``decode_peak_mb`` is ``None`` and
``memory_method`` says so. ``logits_mb_per_step`` (in results) is one step's float32 logits for
one batch.
"""

from __future__ import annotations

import resource
from typing import Any


class MemoryWatch:
    """Peak resident memory of a stretch of work (see the module docstring)."""

    def __init__(self) -> None:
        self.start_mb = _status_mb("VmRSS")
        self.resettable = False
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # 5 = reset the peak RSS to the current RSS
            self.resettable = self.start_mb is not None and _status_mb("VmHWM") is not None
        except OSError:
            pass

    def finish(self) -> dict[str, Any]:
        if self.resettable:
            peak = _status_mb("VmHWM")
            return {"peak_rss_mb": peak, "decode_peak_mb": max(0.0, peak - self.start_mb),
                    "memory_method": "VmHWM reset per evaluation"}
        return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "decode_peak_mb": None, "memory_method": "ru_maxrss (process lifetime)"}


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None
