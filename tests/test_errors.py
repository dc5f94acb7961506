"""User errors as the stage CLI prints them: one line, "<stage>: error: <message>", where the
message never names a stage again (finetune.stage adds the prefix, so a message that starts with
one prints it twice)."""

from __future__ import annotations

import ast
import functools
import json
import os
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from finetune.config.schema import Params
from finetune.errors import UserError
from finetune.paths import PATHS
from stages import split, tokenize
from tests.helpers import ROOT, frame, run_data_stages, tiny_params


@functools.cache
def names() -> frozenset[str]:
    """The stages dvc.yaml runs and the console scripts: the prefixes a CLI prints."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    return frozenset(stages) | frozenset(scripts)


def names_a_stage(message: str) -> bool:
    first = message.split(" ", 1)[0]
    return first.endswith(":") and first[:-1] in names()


def printed_error(stage: ModuleType, root: Path, params: Params, monkeypatch: pytest.MonkeyPatch,
                  capsys: pytest.CaptureFixture[str]) -> str:
    """The line the stage's CLI prints when run in `root` with `params` as its params.yaml; it
    exits 1 and prints nothing else that says error."""
    (root / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json")))
    monkeypatch.chdir(root)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        stage.main(["--params", "params.yaml"])
    assert exit_.value.code == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1, errors
    return errors[0]


def test_split_prints_too_few_records_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    paths = PATHS.under(tmp_path)
    paths.clean.parent.mkdir(parents=True)
    frame(["the first passage here", "the second passage here"]).assign(
        passage_id="p").to_parquet(paths.clean)
    line = printed_error(split, tmp_path, tiny_params(), monkeypatch, capsys)
    assert line.startswith("split: error: 2 passages leave val and test empty")
    assert not names_a_stage(line.removeprefix("split: error: "))


def test_tokenize_prints_too_little_data_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    raw = tmp_path / "raw" / "three.jsonl"
    raw.parent.mkdir()
    raw.write_text("".join(json.dumps({"text": f"Record {i} is a short line of text."}) + "\n"
                           for i in range(3)), encoding="utf-8")
    params = tiny_params(ingest={"paths": [str(raw)]}, tokenize={"block_size": 64})
    with pytest.raises(UserError) as err:  # the stages before tokenize run; tokenize stops
        run_data_stages(params, PATHS.under(tmp_path))
    line = printed_error(tokenize, tmp_path, params, monkeypatch, capsys)
    assert line == f"tokenize: error: {err.value}"
    assert line.startswith("tokenize: error: tokenize.block_size: 64 leaves every split without a block")
    assert not names_a_stage(line.removeprefix("tokenize: error: "))


# Files whose messages still start with a stage's name; each leaves this set when it is fixed.
def leading_text(node: ast.expr) -> str:
    """The literal start of a string expression (an f-string's first part)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
        return str(node.values[0].value)
    if isinstance(node, ast.BinOp):
        return leading_text(node.left)
    return ""


def test_no_user_error_message_starts_with_a_stage_name() -> None:
    found = set()
    for folder in ("finetune", "stages", "commands"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                        and node.func.id == "UserError" and node.args
                        and names_a_stage(leading_text(node.args[0]))):
                    found.add(f"{path.relative_to(ROOT).as_posix()}:{node.lineno}")
    assert not found, sorted(found)


def test_a_finished_process_ends_as_the_interpreter_would_without_its_teardown(tmp_path: Path) -> None:
    """exit_now, which ends stages and console scripts once their work is done: the threads that
    are not daemons finish, the atexit handlers run, what was printed but not flushed comes out,
    and the exit code is the one given; as `python -m <module>`, running_as says so."""
    import subprocess
    import sys

    (tmp_path / "ender.py").write_text(
        "import atexit, sys, threading, time\n"
        "from pathlib import Path\n"
        "from finetune.cli import exit_now, running_as\n"
        "def late():\n"
        "    time.sleep(0.3)\n"
        "    Path('thread.txt').write_text('done')\n"
        "threading.Thread(target=late).start()\n"
        "atexit.register(lambda: Path('atexit.txt').write_text('ran'))\n"
        "sys.stdout.write(f'unflushed {running_as(\"ender\")} {running_as(\"other\")}')\n"
        "exit_now(3)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    ended = subprocess.run([sys.executable, "-m", "ender"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=60)
    assert (ended.returncode, ended.stdout) == (3, "unflushed True False"), ended.stderr
    assert (tmp_path / "thread.txt").read_text() == "done"
    assert (tmp_path / "atexit.txt").read_text() == "ran"
