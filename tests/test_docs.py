"""Every ```python block in the README and the guides runs (blocks of one file share a namespace)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.parametrize("path", [p for p in DOCS if python_blocks(p)], ids=lambda p: p.name)
def test_doc_examples_run(path, capsys):
    namespace: dict = {"__name__": "doc_example"}
    for i, block in enumerate(python_blocks(path)):
        try:
            exec(compile(block, f"{path.name}[block {i}]", "exec"), namespace)
        except Exception as exc:  # pragma: no cover - the message is what matters
            raise AssertionError(f"{path.name}, python block {i} failed: {type(exc).__name__}: {exc}\n{block}") from exc


def cli_commands(path: Path) -> list[list[str]]:
    """Every ``dllm-decode ...`` command in the file's ```bash blocks, continuation lines joined,
    comments dropped; commands using shell variables are skipped (they are not literal)."""
    import shlex

    commands = []
    for block in re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words[:1] == ["dllm-decode"] and not any("$" in w for w in words):
                    commands.append(words[1:])
    return commands


DOC_COMMANDS = [(p.name, argv) for p in DOCS for argv in cli_commands(p)]


@pytest.mark.parametrize("name, argv", DOC_COMMANDS, ids=[f"{n}:{' '.join(a)[:40]}" for n, a in DOC_COMMANDS])
def test_documented_commands_parse(name, argv):
    """The CLI accepts every command the docs show (arguments, names of settings and tasks);
    nothing runs."""
    from dllm_decoding import cli
    from dllm_decoding.evaluation import bench
    from dllm_decoding.cli import train
    from dllm_decoding.tasks import TASKS

    try:
        args = cli.parse_args(argv)
        if args.command == "train-reference":
            train.build_parser().parse_args(args.train_args)
            return
    except SystemExit as exc:  # --help exits 0; a bad argument exits 2
        assert exc.code == 0, f"{name}: `dllm-decode {' '.join(argv)}` does not parse"
        return
    if args.command == "bench" and not args.overhead:
        settings = bench.parse_settings(args.settings) if args.settings else bench.SWEEPS["full"]
        bench.validate(settings, args.tasks or list(TASKS))
    if args.command == "lm-eval":  # lm-eval's parser takes the rest; the model_args are valid
        from dllm_decoding.cli.lm_eval import check_command
        check_command(args.lm_eval_args)


def test_the_docs_show_commands():
    assert len(DOC_COMMANDS) >= 15
