"""The package's layers import one way: a module may import its own layer and the layers below,
never one above (docs/design.md, "Layers"). Imports inside functions count too."""

import ast
from pathlib import Path

import dllm_decoding

PACKAGE = Path(dllm_decoding.__file__).parent
PLUGINS = Path(__file__).parent.parent / "plugins"

#: bottom to top; a module belongs to the first prefix its dotted name starts with
LAYERS = [
    ("core", ["dllm_decoding.core"]),
    ("models", ["dllm_decoding.models"]),
    # the package's __init__ (re-exports core and models) and text.py (generate_text: core + a tokenizer)
    ("public API", ["dllm_decoding", "dllm_decoding.text"]),
    ("plugins, toys, tasks", ["dllm_decoding.plugins", "dllm_decoding.strategies", "dllm_decoding.testing",
                              "dllm_decoding.tasks", "dllm_decoding.streaming"]),
    ("reference model", ["dllm_decoding.reference"]),
    ("evaluation", ["dllm_decoding.evaluation"]),
    ("cli", ["dllm_decoding.cli"]),
]


def layer_of(module: str) -> int:
    best = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (index, len(prefix))
    assert best is not None, module
    return best[0]


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path, path.name == "__init__.py"
    for path in sorted(PLUGINS.glob("*.py")):
        name = "dllm_decoding.plugins" + ("" if path.stem == "__init__" else "." + path.stem)
        yield name, path, path.name == "__init__.py"


def imports(module: str, path: Path, is_package: bool):
    """(imported module, line) for every import of the project in ``path``, absolute or relative."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            # `from pkg import sub` may import a submodule: judge by the submodule
            for alias in node.names:
                yield f"{target}.{alias.name}", node.lineno


def project_target(name: str) -> str | None:
    if name != "dllm_decoding" and not name.startswith("dllm_decoding."):
        return None
    # the longest prefix that is a real module or package of the project
    known = {m for m, _, _ in modules()}
    parts = name.split(".")
    while parts and ".".join(parts) not in known:
        parts.pop()
    return ".".join(parts)


def test_no_module_imports_a_higher_layer():
    violations = []
    for module, path, is_package in modules():
        own = layer_of(module)
        for name, line in imports(module, path, is_package):
            target = project_target(name)
            if target and layer_of(target) > own:
                violations.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {module} ({LAYERS[own][0]}) "
                                  f"imports {target} ({LAYERS[layer_of(target)][0]})")
    assert not violations, "\n".join(violations)


def test_only_the_cli_knows_argparse():
    users = [str(path.relative_to(PACKAGE.parent)) for module, path, pkg in modules()
             if layer_of(module) != len(LAYERS) - 1
             and any(name.split(".")[0] == "argparse" for name, _ in imports(module, path, pkg))]
    assert not users


def test_plugins_import_only_the_public_api():
    allowed = {"dllm_decoding"}
    for module, path, pkg in modules():
        if not module.startswith("dllm_decoding.plugins"):
            continue
        for name, line in imports(module, path, pkg):
            target = project_target(name)
            if target and not target.startswith("dllm_decoding.plugins"):
                assert target in allowed, f"{path.name}:{line} imports {target}; plugins use `dllm_decoding` only"


def test_the_checker_catches_an_upward_import(tmp_path):
    """The checker itself: a core module importing the CLI is flagged."""
    fake = tmp_path / "loop.py"
    fake.write_text("def f():\n    from ..cli import main\n")
    found = [project_target(n) for n, _ in imports("dllm_decoding.core.loop", fake, False)]
    assert found == ["dllm_decoding.cli"] and layer_of("dllm_decoding.cli") > layer_of("dllm_decoding.core.loop")
