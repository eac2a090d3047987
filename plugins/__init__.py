"""Built-in plugins, installed as ``dllm_decoding.plugins``.

Each module is an ordinary plugin module registered exactly like a third-party one; the plugin
manager loads them by name (``dllm_decoding.core.manager.BUILTIN_PLUGINS``).
"""
