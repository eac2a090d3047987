"""The built-in strategy presets: every TOML file shipped in ``dllm_decoding.strategies``.

Also registers the components of the built-in rule modules that ``BUILTIN_PLUGINS``
(``dllm_decoding/core/manager.py``) does not list yet (``local_leap``, ``slow_fast``), so their
presets work; once the core lists them, this forwarding goes (registering a class twice under
its own name is allowed)."""

from importlib import resources

from dllm_decoding import hookimpl
from dllm_decoding.plugins import local_leap, slow_fast

_UNLISTED_RULE_MODULES = (local_leap, slow_fast)


@hookimpl
def dllm_decoding_register_components(register):
    for module in _UNLISTED_RULE_MODULES:
        module.dllm_decoding_register_components(register=register)


@hookimpl
def dllm_decoding_register_strategies(register):
    folder = resources.files("dllm_decoding.strategies")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            register(entry.name[: -len(".toml")], entry)
