"""Observer components (lifecycle hooks only)."""

from dllm_decoding import hookimpl
from dllm_decoding.trace import TraceRecorder


@hookimpl
def dllm_decoding_register_components(register):
    register(TraceRecorder)
