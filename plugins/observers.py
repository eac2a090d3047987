"""Observer components (lifecycle hooks only)."""

from dllm_decoding import TraceRecorder, hookimpl


@hookimpl
def dllm_decoding_register_components(register):
    register(TraceRecorder)
