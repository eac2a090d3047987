"""Issue 14 outside the loop: strict option types, argument checks, broken plugins isolated, the
command line's bad arguments and output paths, a bench that is stopped."""

import importlib
import json
import signal
import sys
import warnings

import pytest
import torch

import dllm_decoding as dd
from dllm_decoding import cli
from dllm_decoding.core import arguments
from dllm_decoding.core.config import MAX_LENGTH, load_strategy, parse_overrides
from dllm_decoding.evaluation import bench
from dllm_decoding.plugins.selection import Threshold
from dllm_decoding.testing import ContextModel, registry_with

PROMPT = torch.tensor([[1, 2, 3]])


# --------------------------------------------------------------------------- strict option types


@pytest.mark.parametrize("overrides, message", [
    ({"gen_length": True}, "gen_length: Input should be a valid integer, not a boolean"),
    ({"gen_length": 4.0}, "gen_length: Input should be a valid integer"),
    ({"gen_length": "8"}, "gen_length: Input should be a valid integer"),
    ({"steps": True}, "steps: Input should be a valid integer, not a boolean"),
    ({"temperature": True}, "temperature: Input should be a valid number, not a boolean"),
    ({"temperature": float("inf")}, "temperature: Input should be less than or equal to 1000 (got inf)"),
    ({"temperature": float("nan")}, "temperature: Input should be less than or equal to 1000 (got nan)"),
    ({"gen_length": 10**12}, f"gen_length: more than any machine decodes, at most {MAX_LENGTH} (one forward's "
                             f"logits would need 3.6 TiB per row and vocabulary entry)"),
    ({"steps": 10**12}, f"steps: more than any machine decodes, at most {MAX_LENGTH}"),
])
def test_strategy_fields_are_strict_and_finite(overrides, message):
    with pytest.raises(dd.ConfigError) as info:
        load_strategy("fast_dllm_threshold", overrides)
    assert message in str(info.value)


def test_strict_types_take_numpy_style_scalars_and_ints_for_floats():
    strategy = load_strategy("fast_dllm_threshold", {"gen_length": torch.tensor(8).item(), "temperature": 1})
    assert strategy.gen_length == 8 and strategy.temperature == 1.0 and isinstance(strategy.temperature, float)

    class Options(dd.OptionsModel):
        k: dd.StrictInt = 1
        alpha: dd.FiniteFloat = 0.5

    np = pytest.importorskip("numpy")
    options = Options(k=np.int64(3), alpha=np.float32(0.25))
    assert options.k == 3 and type(options.k) is int and options.alpha == 0.25
    for bad in ({"k": True}, {"alpha": False}, {"alpha": float("inf")}, {"k": "3"}, {"alpha": "0.5"}):
        with pytest.raises(dd.ConfigError, match="invalid option of Options"):
            Options(**bad)


def test_cli_values_keep_working_under_strict_types():
    strategy = load_strategy("credit_decoding", parse_overrides(
        ["gen_length=8", "temperature=1", "select.threshold=0.5", "fuse.credit.alpha=1"]))
    assert strategy.gen_length == 8 and strategy.temperature == 1.0


def test_documented_constructors_raise_config_error():
    with pytest.raises(dd.ConfigError, match="invalid strategy: gen_length: Input should be greater than 0"):
        dd.Strategy(select="threshold", gen_length=0)
    with pytest.raises(dd.ConfigError, match="block_length=3 does not divide gen_length=8"):
        dd.Strategy(select="threshold", gen_length=8, block_length=3)
    with pytest.raises(dd.ConfigError, match="invalid option of component 'threshold': threshold: Input should "
                                             "be less than or equal to 1"):
        Threshold(threshold=2.0)
    assert isinstance(dd.ConfigError("x"), ValueError)  # code catching ValueError keeps working


def test_a_strategy_dict_with_non_string_keys_is_a_config_error():
    with pytest.raises(dd.ConfigError, match="key 1 is not a field name"):
        load_strategy({"select": "threshold", 1: 2})


# --------------------------------------------------------------------------- None spelled "none"


def test_none_is_spelled_none_on_the_command_line_and_in_toml(tmp_path):
    strategy = load_strategy("credit_decoding", parse_overrides(["select.near_max=none"]))
    assert strategy.instantiate()[-1].options.near_max is None
    strategy = load_strategy("dinfer_hierarchy", parse_overrides(["select.threshold=none", "select.low_threshold=None"]))
    select = [c for c in strategy.instantiate() if c.hook_point == "select"][0]
    assert select.options.threshold is None and select.options.low_threshold is None
    assert load_strategy("llada_low_confidence", parse_overrides(["select.k=4", "select.k=none"])).resolved()["select"]["k"] is None
    assert load_strategy("threshold_remask", parse_overrides(["remask=none"])).remask is None
    assert load_strategy("fast_dllm_threshold", {"gen_length": 8, "block_length": "none"}).effective_block_length == 8
    toml = tmp_path / "s.toml"
    toml.write_text('block_length = "none"\n[select]\nuse = "threshold"\nnear_max = "none"\n')
    assert load_strategy(toml).resolved()["select"]["near_max"] is None
    with pytest.raises(dd.ConfigError, match="select.threshold: Input should be a valid number"):
        load_strategy("fast_dllm_threshold", parse_overrides(["select.threshold=none"]))  # takes no None


# --------------------------------------------------------------------------- strategy files


def test_strategy_file_errors_name_the_file(tmp_path):
    with pytest.raises(dd.ConfigError, match=r"strategy file '.*' is a directory, not a \.toml file"):
        load_strategy(tmp_path)
    folder = tmp_path / "dir.toml"
    folder.mkdir()
    with pytest.raises(dd.ConfigError, match="is a directory"):
        load_strategy(folder)
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes('description = "caf\xe9"\n[select]\nuse = "threshold"\n'.encode("latin-1"))
    with pytest.raises(dd.ConfigError, match=r"latin1\.toml' is not UTF-8 text \(byte 18"):
        load_strategy(latin1)


# --------------------------------------------------------------------------- generate's arguments


@pytest.mark.parametrize("kwargs, error, message", [
    ({"overrides": ["select.threshold=0.8"]}, dd.ConfigError, "overrides must be a dict of dotted keys"),
    ({"overrides": {1: 2}}, dd.ConfigError, "overrides: key 1 is not a dotted option name"),
    ({"eos_id": "3"}, dd.InputError, "eos_id must be an int token id, a list of them, or None; got '3' (str)"),
    ({"eos_id": True}, dd.InputError, "eos_id must be an int token id"),
    ({"eos_id": 2.0}, dd.InputError, "eos_id must be an int token id"),
    ({"observers": ["trace"]}, dd.InputError, "observers: 'trace' is a name; observers takes component instances"),
    ({"observers": "trace"}, dd.InputError, "observers must be a list of component instances"),
    ({"observers": [dd.TraceRecorder]}, dd.InputError, "TraceRecorder is a class; pass an instance"),
    ({"observers": [3]}, dd.InputError, "observers: 3 is a int, not a Component instance"),
    ({"registry": "foo"}, dd.InputError, "registry must be a PluginRegistry"),
])
def test_generate_arguments_checked(kwargs, error, message):
    with pytest.raises(error) as info:
        arguments.check_generate_arguments(**kwargs, vocab_size=8)
    assert message in str(info.value)


def test_generate_arguments_accept_valid_values():
    arguments.check_generate_arguments(overrides={"select.threshold": 0.5}, eos_id=torch.tensor(3).item(),
                                       observers=[dd.TraceRecorder()], registry=dd.get_registry(), vocab_size=8)
    assert arguments.check_eos_id(None, 8) is None
    with pytest.raises(dd.InputError, match=r"eos_id=8 is outside the model's vocabulary \[0, 8\)"):
        arguments.check_eos_id(8, 8)


def test_load_strategy_checks_overrides():
    with pytest.raises(dd.ConfigError, match="use dllm_decoding.core.config.parse_overrides"):
        load_strategy("fast_dllm_threshold", ["select.threshold=0.8"])


def test_decode_size_refused_with_the_size_needed():
    arguments.check_decode_size(64, 1024, 126464)  # LLaDA-sized: fine
    with pytest.raises(dd.InputError, match=r"needs 3\.6 PiB for one forward's logits \(batch 8 x 1000000000 "
                                            r"positions x vocabulary 126464"):
        arguments.check_decode_size(8, 10**9, 126464)


def test_as_model_mask_id_type():
    with pytest.raises(dd.InputError, match=r"mask_id must be an int token id, got 7\.0 \(float\)"):
        dd.as_model(lambda ids: ids, mask_id=7.0, vocab_size=8)
    with pytest.raises(dd.InputError, match="mask_id must be an int token id, got True"):
        dd.as_model(lambda ids: ids, mask_id=True, vocab_size=8)


# --------------------------------------------------------------------------- plugins in the wild


BROKEN_PLUGIN = '''
import dllm_decoding as dd


class Bad(dd.Component):
    name = "bad"
    hook_point = "select"

    @dd.hookimpl
    def selct(self, state, proposal):  # misspelled: the component has no select method
        return state.selectable


@dd.hookimpl
def dllm_decoding_register_components(register):
    register(Bad)
'''

GOOD_PLUGIN = '''
from pathlib import Path
import dllm_decoding as dd


@dd.hookimpl
def dllm_decoding_register_strategies(register):
    register("ghost", Path(__file__).with_name("not_shipped.toml"))
'''


@pytest.fixture
def installed_plugins(tmp_path, monkeypatch):
    """Three installed entry points: one whose component is broken, one whose module does not
    import, one whose preset file was not shipped."""
    site = tmp_path / "site"
    dist = site / "wild_plugins-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: wild-plugins\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[dllm_decoding]\nmisspelled = wild_broken\n"
                                           "unimportable = wild_missing_module\nghost = wild_ghost\n")
    (site / "wild_broken.py").write_text(BROKEN_PLUGIN)
    (site / "wild_ghost.py").write_text(GOOD_PLUGIN)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    monkeypatch.delenv("DLLM_DECODING_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.delenv("DLLM_DECODING_DISABLE_PLUGINS", raising=False)
    dd.reset_default_registry()
    yield site
    for name in ("wild_broken", "wild_ghost"):
        sys.modules.pop(name, None)
    dd.reset_default_registry()


def test_a_broken_installed_plugin_is_skipped_and_reported(installed_plugins):
    with pytest.warns(dd.PluginWarning) as caught:
        registry = dd.get_registry(dd.make_plugin_manager())
    failures = {f.plugin: f.error for f in registry.failures}
    assert set(failures) == {"misspelled", "unimportable", "ghost"}
    assert "component 'bad' declares hook_point 'select' but defines no `select` method" in failures["misspelled"]
    assert "ModuleNotFoundError" in failures["unimportable"]
    assert "not_shipped.toml" in failures["ghost"] and "does not ship it" in failures["ghost"]
    assert any("DLLM_DECODING_DISABLE_PLUGINS=misspelled" in str(w.message) for w in caught)
    assert "bad" not in registry.components and "ghost" not in registry.presets
    # built-ins keep working, plain generate (the default registry) included
    out = dd.generate(ContextModel(vocab_size=8), PROMPT, "fast_dllm_threshold", gen_length=4, registry=registry)
    assert out.sequences.shape == (1, 7)
    with pytest.warns(dd.PluginWarning):
        assert dd.generate(ContextModel(vocab_size=8), PROMPT, "credit_decoding", gen_length=4).nfe.tolist()


def test_plugins_disabled_by_name(installed_plugins, monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning for what was switched off
        monkeypatch.setenv("DLLM_DECODING_DISABLE_PLUGINS", "misspelled, unimportable")
        registry = dd.get_registry(dd.make_plugin_manager(disable=["ghost"]))
    assert registry.failures == []
    monkeypatch.delenv("DLLM_DECODING_DISABLE_PLUGINS")
    with pytest.warns(dd.PluginWarning):
        registry = dd.get_registry(dd.make_plugin_manager(disable="ghost,unimportable"))
    assert [f.plugin for f in registry.failures] == ["misspelled"]


def test_plugins_command_lists_broken_plugins(installed_plugins, capsys):
    assert cli.main(["plugins"]) == 0
    captured = capsys.readouterr()
    assert "(skipped: broken)" in captured.out and "misspelled" in captured.out
    assert "DLLM_DECODING_DISABLE_PLUGINS=" in captured.out
    assert captured.err.startswith("warning: dllm-decoding: plugin ")
    assert cli.main(["plugins", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    broken = {r["plugin"]: r for r in rows if r.get("skipped")}
    assert set(broken) == {"misspelled", "unimportable", "ghost"} and broken["ghost"]["component"] is None
    assert cli.main(["strategies"]) == 0  # every built-in preset still lists
    assert "credit_decoding" in capsys.readouterr().out


def test_explicit_plugins_still_raise():
    class NoHook(dd.Component):
        name = "no_hook"
        hook_point = "select"

    with pytest.raises(dd.PluginError, match="defines no `select` method"):
        registry_with(NoHook)


def test_missing_preset_file_names_the_plugin(tmp_path):
    from dllm_decoding.core.config import _read_toml

    with pytest.raises(dd.ConfigError, match=r"\(preset of plugin 'mine'\) does not exist: the plugin's package "
                                             r"does not ship it"):
        _read_toml(tmp_path / "gone.toml", "mine")


def test_debug_shows_a_raising_plugins_traceback(capsys, tmp_path):
    (tmp_path / "bad.toml").write_text("[select]\nuse = 5\n")
    assert cli.main(["strategies", str(tmp_path / "bad.toml")]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert cli.main(["--debug", "strategies", str(tmp_path / "bad.toml")]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "dllm-decode strategies: error:" in err
    assert cli.main(["strategies", str(tmp_path / "bad.toml"), "--debug"]) == 2
    assert "Traceback (most recent call last)" in capsys.readouterr().err


# --------------------------------------------------------------------------- the command line


@pytest.mark.parametrize("argv, message", [
    (["generate", "--model", "toy", "--prompt-ids", "1,2", "--gen-length", "0"], "--gen-length 0: give a positive"),
    (["generate", "--model", "toy", "--prompt-ids", "1,2", "--block-length", "0"], "--block-length 0: give a positive"),
    (["generate", "--model", "toy", "--prompt-ids", "1,x"], "--prompt-ids '1,x': expected comma-separated integer token ids"),
    (["generate", "--model", "toy", "--prompt-ids", "1,,2"], "expected comma-separated integer token ids"),
    (["generate", "--task", "sort", "--n", "0"], "--n 0: give a number of examples from 1 to"),
    (["generate", "--task", "sort", "--n", "-3"], "--n -3: give a number of examples from 1 to"),
    (["eval", "--task", "sort", "--n", "1000000000"], "--n 1000000000: give a number of examples from 1 to 1000000"),
    (["eval", "--task", "sort", "--batch-size", "0"], "--batch-size 0: give a number of rows per decode call >= 1"),
    (["demo", "--n", "0"], "--n 0: give a number of examples"),
    (["generate", "--prompt-ids", "1,2", "--kv-refresh", "2"], "--kv-refresh 2 refreshes the key-value cache: it needs --kv-cache"),
    (["generate", "--prompt-ids", "1,2", "--kv-refresh", "0", "--kv-cache", "dual"], "--kv-refresh 0: give a number >= 1"),
    (["generate", "--model", "no/such/dir", "--prompt-ids", "1,2"], "model 'no/such/dir': no such checkpoint directory"),
    (["generate", "--prompt", "sort: 3,1 ?!"], "has characters the reference tokenizer does not know: ' !?'"),
])
def test_cli_bad_arguments_are_one_line(capsys, argv, message):
    assert cli.main(argv) == 2, argv
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


def test_eval_on_an_empty_or_corrupt_folder_says_so(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["eval", "--model", str(empty), "--task", "sort"]) == 2
    assert "is not a model checkpoint: it has no config.json (the folder is empty)" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text("{not json")
    assert cli.main(["eval", "--model", str(corrupt), "--task", "sort"]) == 2
    err = capsys.readouterr().err
    assert "config.json' is not valid JSON" in err and "another model" not in err


def test_generate_zero_length_is_refused_not_ignored(capsys):
    assert cli.main(["generate", "--model", "toy", "--prompt-ids", "1,2", "--gen-length", "4", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["results"][0]["answer_ids"]) == 4


def test_task_examples_count_checked():
    from dllm_decoding.tasks import get_task

    for n in (0, -3, True, 10**9):
        with pytest.raises(dd.ConfigError, match="give a number from 1 to"):
            get_task("sort").examples("test", n)


def test_evaluate_batch_size_checked():
    from dllm_decoding.evaluation.evaluate import evaluate

    with pytest.raises(dd.ConfigError, match="batch_size=0"):
        evaluate(None, None, "fast_dllm_threshold", "sort", 4, batch_size=0)


# --------------------------------------------------------------------------- output files


def test_output_paths_are_checked_before_any_work(tmp_path, capsys, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("loaded a model before checking the output path")

    monkeypatch.setattr(cli.bench, "model_from_args", no_model)
    monkeypatch.setattr(cli.evaluate, "model_from_args", no_model)
    regular = tmp_path / "file"
    regular.write_text("x")
    assert cli.main(["bench", "--quick", "--out", str(regular / "sub")]) == 2
    assert "cannot create the folder" in capsys.readouterr().err
    assert cli.main(["bench", "--quick", "--out", str(regular)]) == 2
    assert "it is a file, not a folder" in capsys.readouterr().err
    assert cli.main(["eval", "--task", "sort", "--json", str(tmp_path / "missing" / "r.json")]) == 2
    assert "missing' does not exist; create it first" in capsys.readouterr().err
    assert cli.main(["bench", "--quick", "--out", str(tmp_path / "ok"), "--report", str(tmp_path / "no" / "p.md")]) == 2
    assert "--report" in capsys.readouterr().err


def test_a_full_disk_fails_before_the_run(tmp_path, monkeypatch):
    import errno
    import os

    from dllm_decoding.cli.common import check_writable_dir

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(dd.ConfigError, match="--out '.*': cannot write there: No space left on device"):
        check_writable_dir(tmp_path / "out", "--out")


def _fake_result(task, strategy):
    return {"task": task, "strategy": strategy, "overrides": {}, "n": 4, "gen_length": 8, "blocks": 1,
            "accuracy": 0.5, "nfe_mean": 4, "nfe": [4] * 4, "tpf": 2.0, "forward_calls": 4,
            "tokens_per_second": 1.0, "latency_per_sample_s": 0.001, "seconds": 0.1}


def test_sigterm_stops_a_bench_like_ctrl_c_and_keeps_bench_json(tmp_path, monkeypatch, capsys):
    committed = tmp_path / "bench.json"
    committed.write_text('{"committed": true}')
    calls = []

    def fake_evaluate(model, tokenizer, strategy, task, n, **kw):
        calls.append(strategy)
        if len(calls) == 2:
            signal.raise_signal(signal.SIGTERM)  # as `kill` would, mid-run
        return _fake_result(task, strategy)

    monkeypatch.setattr(bench, "evaluate", fake_evaluate)
    monkeypatch.setattr(cli.bench, "model_from_args", lambda args, **kw: (None, None))
    before = signal.getsignal(signal.SIGTERM)
    argv = ["bench", "--setting", "fast_dllm_threshold", "--setting", "credit_decoding", "--setting", "margin_topk",
            "--tasks", "sort", "--n", "4", "--no-plots", "--out", str(tmp_path)]
    assert cli.main(argv) == 130
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is restored
    assert json.loads(committed.read_text()) == {"committed": True}
    partial = json.loads((tmp_path / "bench.partial.json").read_text())
    assert partial["interrupted"] is True and partial["partial"] is True and len(partial["results"]) == 1
    assert "finished results kept in" in capsys.readouterr().out


def test_a_finished_bench_replaces_bench_json_and_says_where(tmp_path, monkeypatch, capsys):
    (tmp_path / "bench.partial.json").write_text("{}")
    monkeypatch.setattr(bench, "evaluate", lambda model, tokenizer, strategy, task, n, **kw: _fake_result(task, strategy))
    monkeypatch.setattr(cli.bench, "model_from_args", lambda args, **kw: (None, None))
    argv = ["bench", "--setting", "fast_dllm_threshold", "--tasks", "sort", "--n", "4", "--no-plots", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["interrupted"] is False and "partial" not in saved and len(saved["results"]) == 1
    assert not (tmp_path / "bench.partial.json").exists()
    assert f"wrote {tmp_path / 'bench.json'}, {tmp_path / 'bench.md'}" in capsys.readouterr().out


# --------------------------------------------------------------------------- train-reference


@pytest.mark.parametrize("argv, message", [
    (["--batch-tokens", "0"], "--batch-tokens 0"),
    (["--steps", "-5"], "--steps -5"),
    (["--hidden", "192", "--heads", "5"], "--hidden 192 is not a multiple of --heads 5"),
    (["--lr", "nan"], "--lr nan"),
    (["--lr", "0"], "--lr 0.0"),
    (["--layers", "0"], "--layers 0"),
    (["--eval-every", "0"], "--eval-every 0"),
    (["--minutes", "-1"], "--minutes -1.0"),
    (["--mix-floor", "inf"], "--mix-floor inf"),
])
def test_train_reference_arguments_checked_before_any_work(tmp_path, monkeypatch, capsys, argv, message):
    from dllm_decoding.reference import train as trainer

    monkeypatch.setattr(trainer, "train", lambda args: pytest.fail("trained with invalid arguments"))
    assert cli.main(["train-reference", "--out", str(tmp_path / "run"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()  # nothing written
