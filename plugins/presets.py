"""The built-in strategy presets: every TOML file shipped in ``dllm_decoding.strategies``."""

from importlib import resources

from dllm_decoding import hookimpl


@hookimpl
def dllm_decoding_register_strategies(register):
    folder = resources.files("dllm_decoding.strategies")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            register(entry.name[: -len(".toml")], entry)
