"""Plugin discovery: built-ins register like third-party plugins; an installed package with an
entry point is found, listed and usable by name in a TOML strategy."""

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dllm_decoding as dd
from dllm_decoding.testing import ContextModel

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "dllm-plugin-example"


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory):
    """pip-install the example plugin package into a private directory (no network needed)."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--no-index", "--target", str(target), str(EXAMPLE)],
                   check=True)
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    yield target
    sys.path.remove(str(target))
    for name in [m for m in sys.modules if m.startswith("dllm_plugin_example")]:
        del sys.modules[name]
    dd.reset_default_registry()


def test_builtins_register_through_the_same_hook():
    pm = dd.make_plugin_manager(load_entrypoints=False)
    names = {pm.get_name(p) for p in pm.get_plugins()}
    assert {"builtin:scoring", "builtin:selection", "builtin:credit", "builtin:presets"} <= names
    registry = dd.get_registry(pm)
    assert registry.component_origin["credit"] == "builtin:credit"
    assert {"llada_low_confidence", "fast_dllm_threshold", "credit_decoding"} <= set(registry.presets)


def test_entry_point_plugin_is_found_listed_and_usable(installed_example, tmp_path):
    registry = dd.get_registry(dd.make_plugin_manager())
    assert registry.component_origin["capped_threshold"] == "capped_threshold"
    assert "capped_threshold" in dd.list_strategies(registry)
    # used by name from a TOML strategy written by a user
    toml = tmp_path / "mine.toml"
    toml.write_text('[[fuse]]\nuse = "credit"\n[select]\nuse = "capped_threshold"\n'
                    'threshold = 0.5\nmax_per_step = 2\n')
    model = ContextModel(vocab_size=8, scale=12.0)
    out = dd.generate(model, torch.tensor([[1, 2, 3]]), toml, gen_length=8, trace=True,
                      registry=registry)
    assert int(out.trace.committed.sum(dim=2).max()) <= 2  # the cap holds
    assert not bool((out.answers == model.mask_id).any())
    preset = dd.generate(model, torch.tensor([[1, 2, 3]]), "capped_threshold", gen_length=8,
                         registry=registry)
    assert preset.sequences.shape == (1, 11)


def test_entry_point_plugin_listed_by_cli(installed_example):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(installed_example), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "dllm_decoding.cli", "plugins", "--json"],
                         capture_output=True, text=True, env=env, check=True)
    rows = {r["component"]: r for r in json.loads(out.stdout)}
    assert rows["capped_threshold"]["plugin"] == "capped_threshold"
    assert rows["capped_threshold"]["options"] == ["threshold", "max_per_step"]
    out = subprocess.run([sys.executable, "-m", "dllm_decoding.cli", "strategies"],
                         capture_output=True, text=True, env=env, check=True)
    assert "capped_threshold" in out.stdout


def test_autoload_opt_out(installed_example, monkeypatch):
    monkeypatch.setenv("DLLM_DECODING_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert "capped_threshold" not in dd.get_registry(dd.make_plugin_manager()).components
    assert "capped_threshold" not in dd.get_registry(dd.make_plugin_manager(load_entrypoints=False)).components


def test_broken_plugin_registration_names_the_plugin():
    class Broken:
        @dd.hookimpl
        def dllm_decoding_register_components(self, register):
            raise RuntimeError("half-installed")

    pm = dd.make_plugin_manager(load_entrypoints=False, plugins=[Broken()])
    with pytest.raises(dd.PluginError, match="raised in hook 'dllm_decoding_register_components': RuntimeError: half-installed"):
        dd.get_registry(pm)


def test_misspelled_discovery_hook_is_an_error():
    class Typo:
        @dd.hookimpl
        def dllm_decoding_register_component(self, register):
            pass

    with pytest.raises(dd.PluginError, match="unknown hook"):
        dd.make_plugin_manager(load_entrypoints=False, plugins=[Typo()])


def test_presets_are_found_from_package_data():
    from importlib import resources

    files = {p.name for p in resources.files("dllm_decoding.strategies").iterdir()}
    assert "credit_decoding.toml" in files
    assert importlib.metadata.version("dllm-decoding")
