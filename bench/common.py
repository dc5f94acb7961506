"""What the benchmarks share: the project root, writing their part of bench/results.md, running a
stage as the pipeline does, and the model they measure (the base model, or a tiny one with its
tokenizer)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TINY = "tiny (2 layers, width 64)"  # how the results name the model of tiny_model


def write_section(md: Path, section: str, markers: tuple[str, str]) -> None:
    """`md` (bench/results.md) with the section between `markers` replaced by `section` (which
    starts and ends with them), or appended."""
    text = md.read_text(encoding="utf-8") if md.exists() else ""
    pattern = re.compile(re.escape(markers[0]) + ".*?" + re.escape(markers[1]) + "\n?", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else f"{text}\n{section}"
    md.write_text(text, encoding="utf-8")


def write_head(md: Path, head: str) -> None:
    """`md` with everything before its first marked section (`<!-- name:start -->`) replaced by
    `head`: `python -m bench`'s table, leaving the sections the other benchmarks wrote."""
    text = md.read_text(encoding="utf-8") if md.exists() else ""
    first = re.search(r"^<!-- [\w-]+:start -->", text, re.M)
    md.write_text(head + ("\n" + text[first.start():] if first else ""), encoding="utf-8")


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`base` with the keys of `override` in it, nested sections merged key by key."""
    return {k: merge(base[k], v) if isinstance(v, dict) else v for k, v in override.items()} | {
        k: v for k, v in base.items() if k not in override}


def call_stage(stage: Any, params: Any, paths: Any, **extra: Any) -> dict[str, Any]:
    """A stage's run() on `paths`, in this process, given the params keys its signature names,
    taken from the whole `params` (a finetune.config.schema.Params) as stage_main takes them from
    params.yaml (finetune.stage.run_schema)."""
    from finetune.config.loading import Key, section_name
    from finetune.stage import run_schema

    values = {name: getattr(getattr(params, section_name(kind.section)), kind.name)
              if isinstance(kind, Key) else getattr(params, name)
              for name, kind in run_schema(stage.run).items()}
    return stage.run(**values, paths=paths, **extra)


def data_project(where: Path, base: Path, overrides: dict[str, Any]) -> tuple[Any, Any, dict[str, Any]]:
    """The data stages of this pipeline in `where` (this project's params.yaml with `overrides`,
    `base` as models/base), run in this process: the params, the paths and tokenize's summary."""
    import yaml

    from finetune.config.schema import Params
    from finetune.paths import PATHS
    from stages import clean, ingest, split, tokenize

    params = Params.model_validate(merge(yaml.safe_load((ROOT / "params.yaml").read_text()),
                                         {"num_proc": 1, **overrides}))
    paths = PATHS.under(where)
    paths.base_model.parent.mkdir(parents=True, exist_ok=True)
    paths.base_model.symlink_to(base.resolve())
    for stage in (ingest, clean, split):
        call_stage(stage, params, paths)
    return params, paths, call_stage(tokenize, params, paths)


def run_stage(project: Path, stage: str) -> tuple[float, int]:
    """Run `python -m stages.<stage>` in `project` as the pipeline does; (seconds, peak RSS in
    bytes)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "true"}
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: a full pipe would stall the stage
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", f"stages.{stage}"], cwd=project, env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        if status != 0:
            err.seek(0)
            raise RuntimeError(f"stage {stage} failed: {err.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss * 1024


def tokenized_tokens(project: Path) -> int:
    """The tokens of every split, from the tokenize stage's metrics/tokenize.json in `project`."""
    from finetune.paths import SPLITS

    metrics = json.loads((project / "metrics" / "tokenize.json").read_text())
    return sum(metrics[split]["tokens"] for split in SPLITS)


def base_model_dir(where: Path, base: Path | None = None) -> Path:
    """`base` if given; else models/base of this project (after `dvc repro` or `dvc pull`); else
    built once under `where` by the base_model stage with this project's params, and reused by
    every benchmark of the run."""
    if base is not None:
        return base
    if (ROOT / "models" / "base" / "config.json").exists():
        return ROOT / "models" / "base"
    project = where / "base"
    if not (project / "models" / "base" / "config.json").exists():
        project.mkdir(parents=True, exist_ok=True)
        (project / "params.yaml").write_text((ROOT / "params.yaml").read_text())
        run_stage(project, "base_model")
    return project / "models" / "base"


def tiny_model(tokenizer: Any) -> Any:
    """A tiny Llama (2 layers, width 64, untrained) for `tokenizer`: what --quick and the smoke
    tests measure, in seconds."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, vocab_size=len(tokenizer),
                         max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return AutoModelForCausalLM.from_config(config)


def tiny_base(folder: Path, seed: int = 0) -> Path:
    """A base model folder made in seconds, for smoke runs (models/base takes minutes to build):
    tiny_model with the scratch model's byte-level BPE tokenizer (finetune.models.sources), learnt
    from this project's sample texts, and the plain chat template."""
    import torch

    from finetune.config.model import ScratchParams
    from finetune.models.loading import save_tokenizer
    from finetune.models.sources import from_scratch
    from finetune.text.prompts import PLAIN_CHAT_TEMPLATE

    texts = [f.read_text(encoding="utf-8") for f in sorted((ROOT / "data" / "raw").iterdir())]
    _, tokenizer = from_scratch(texts, ScratchParams(), seed)
    tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
    torch.manual_seed(seed)
    tiny_model(tokenizer).save_pretrained(folder, safe_serialization=True)
    save_tokenizer(tokenizer, folder)
    return folder


def load_from(path: Path, quick: bool) -> tuple[Any, Any]:
    """The model in `path` and its tokenizer, or (quick) a tiny Llama with that tokenizer."""
    from finetune.models.loading import load_model, load_tokenizer

    tokenizer = load_tokenizer(path)
    return (tiny_model(tokenizer) if quick else load_model(path)), tokenizer


# A copy of this project with a tiny scratch model and a short run: the cached `dvc repro` that
# bench times, and the tiny project of the tests' real DVC runs (tests.helpers).
TINY_PROJECT = {
    "model": {"source": "scratch"},
    "tokenize": {"block_size": 64},
    "train": {"max_steps": 8, "batch_size": 4, "eval_steps": 4, "logging_steps": 2,
              "learning_rate": 3.0e-3, "device": "cpu"},
    "evaluate": {"max_new_tokens": 8},
}
