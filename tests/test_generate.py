"""The `generate` command on the tiny trained model: streaming, seeds, --compare, pairs-mode
prompts, interactive mode, and the installed console script."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from commands import generate
from finetune import generation
from finetune.config.schema import Params
from finetune.config.tokenize import TokenizeParams
from finetune.models.loading import load_tokenizer
from finetune.paths import Paths
from finetune.text.prompts import inference


class Recorder(io.StringIO):
    """Standard output that remembers each write, to see the tokens arrive one by one."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


@pytest.fixture
def project(trained: tuple[Params, Paths], monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tiny trained project as the working directory (generate's default paths)."""
    _, paths = trained
    root = paths.base_model.parents[1]
    monkeypatch.chdir(root)
    return root


def run(*argv: str, stdin: str = "") -> Recorder:
    out = Recorder()
    generate.run(generate.parse_args(list(argv)), io.StringIO(stdin), out)
    return out


def test_one_shot_streams_the_continuation_and_a_seed_repeats_it(project: Path) -> None:
    first = run("The miller", "--max-new-tokens", "24", "--seed", "3", "--temperature", "1.0")
    text = first.getvalue()
    assert text.startswith("The miller") and len(text.strip()) > len("The miller")
    assert len(first.writes) > 3  # streamed in pieces, not printed once at the end
    assert run("The miller", "--max-new-tokens", "24", "--seed", "3", "--temperature", "1.0"
               ).getvalue() == text
    assert run("The miller", "--max-new-tokens", "24", "--seed", "4", "--temperature", "1.0"
               ).getvalue() != text


def test_compare_runs_base_then_finetuned_with_the_same_settings(project: Path) -> None:
    greedy = ("--temperature", "0", "--max-new-tokens", "12")
    both = run("Rain fell", "--compare", *greedy).getvalue()
    base = run("Rain fell", "--model", "models/base", *greedy).getvalue()
    tuned = run("Rain fell", *greedy).getvalue()
    assert both == f"── models/base ──\n{base}── models/finetuned ──\n{tuned}\n"


def test_pairs_mode_renders_the_training_template_and_prints_only_the_answer(project: Path) -> None:
    tokenizer = load_tokenizer(project / "models" / "finetuned")
    asking = inference(tokenizer, "pairs", TokenizeParams(prompt_template="Q: {prompt}\nA:"))
    (project / "pairs.json").write_text(json.dumps(dataclasses.asdict(asking)))
    assert generation.render("How many sacks?", tokenizer, asking, "pairs") == (
        "Q: How many sacks?\nA:", True)
    assert generation.render("How many sacks?", tokenizer, asking, "text") == ("How many sacks?", False)
    answer = run("How many sacks?", "--inference", "pairs.json", "--seed", "1").getvalue()
    assert answer.strip() and not answer.startswith("How many sacks?")


def test_interactive_mode_answers_each_line_until_an_empty_one(project: Path) -> None:
    out = run("--max-new-tokens", "4", "--seed", "0", stdin="The miller\nRain fell\n\nnever read\n")
    text = out.getvalue()
    assert text.count("The miller") == 1 and text.count("Rain fell") == 1
    assert "never read" not in text


@pytest.mark.slow  # two command processes
def test_the_console_script_is_installed_and_reports_errors_in_one_line(project: Path) -> None:
    script = shutil.which("generate")
    assert script, "`generate` is not on PATH: is the project installed (uv sync)?"
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error"}
    done = subprocess.run([script, "The miller", "--max-new-tokens", "5", "--seed", "1"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("The miller")
    missing = subprocess.run([script, "x", "--model", "models/nowhere"], capture_output=True,
                             text=True, env=env, timeout=300)
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1] == (
        "generate: error: models/nowhere: no model there; run the stages before this one "
        "(uv run dvc repro)")


@pytest.fixture
def chat_project(trained_chat: tuple[Params, Paths], monkeypatch: pytest.MonkeyPatch) -> Path:
    root = trained_chat[1].base_model.parents[1]
    monkeypatch.chdir(root)
    return root


def test_chat_session_keeps_the_history(chat_project: Path) -> None:
    args = generate.parse_args(["--chat", "--system", "You are Robin.", "--temperature", "0",
                                "--max-new-tokens", "6"])
    bot = generation.Generator(Path("models/finetuned"), args, "cpu")
    first = bot("Where is my order FH-1001?", io.StringIO())
    second = bot("Can I return it?", io.StringIO())
    assert [m["role"] for m in bot.history] == ["user", "assistant"] * 2
    assert bot.history[1]["content"] == first.strip() and bot.history[3]["content"] == second.strip()
    text, _ = generation.render("And now?", bot.tokenizer, bot.asking, "chat", bot.history, "You are Robin.")
    assert text.startswith("You are Robin.\n\n### User:\nWhere is my order FH-1001?")
    assert "### User:\nCan I return it?" in text and text.endswith("### User:\nAnd now?\n\n### Assistant:\n")
    # the same session through the command, with piped input
    out = run("--chat", "--temperature", "0", "--max-new-tokens", "6", "--system", "You are Robin.",
              stdin="Where is my order FH-1001?\nCan I return it?\n\n")
    assert out.getvalue() == f"{first}\n\n{second}\n\n"  # a blank line after each reply


def test_one_shot_in_chat_mode_answers_as_a_user_message(chat_project: Path) -> None:
    out = run("Where is my order FH-1001?", "--temperature", "0", "--max-new-tokens", "6")
    assert out.getvalue().strip() and "FH-1001?" not in out.getvalue().split("\n")[0][:12]
    with pytest.raises(SystemExit):
        generate.parse_args(["--chat", "a prompt"])
