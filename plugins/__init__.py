"""Built-in plugins, installed as ``dllm_decoding.plugins``.

Each module is an ordinary plugin module registered exactly like a third-party one (see
``dllm_decoding.manager.make_plugin_manager``).
"""

BUILTIN = ("scoring", "selection", "credit", "remasking", "observers", "presets")
