"""Shared readers and writers: parquet, JSON metrics, atomic outputs, models, and the stage CLI."""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from stages.params import PATHS, Params, UserError, load


@contextmanager
def atomic_output(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling path to write a file or directory into; on success it is renamed
    to `final` in one step, on any failure it is removed. A killed stage thus never leaves a
    complete-looking `final` behind."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for kind in ("tmp", "old"):  # leftovers of a process that was killed before cleaning up
        for stale in final.parent.glob(f".{glob.escape(final.name)}.{kind}-*"):
            remove(stale)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        yield tmp
    except BaseException:
        remove(tmp)
        raise
    old = None
    if final.is_dir():  # os.replace cannot replace a non-empty directory: swap it aside first
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    remove(old)


def remove(path: Path | None) -> None:
    """Delete a file, a symlink or a directory tree, if it is there."""
    if path is None or not (path.exists() or path.is_symlink()):
        return
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def write_parquet(df: pd.DataFrame, path: Path) -> None:
    with atomic_output(path) as tmp:
        df.to_parquet(tmp, index=False)


def read_parquet(path: Path) -> pd.DataFrame:
    if not Path(path).exists():
        raise UserError(f"{path}: missing; run the stages before this one (uv run dvc repro)")
    return pd.read_parquet(path)


def write_json(data: Any, path: Path) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def pick_device(preference: str) -> str:
    """`auto` takes CUDA when present, else the CPU."""
    import torch

    cuda = torch.cuda.is_available()
    if preference == "cuda" and not cuda:
        raise UserError("train.device: cuda was asked for, but no CUDA device is available")
    if preference == "auto":
        return "cuda" if cuda else "cpu"
    return preference


def pick_precision(preference: str, device: str) -> str:
    """`auto` takes bf16 on a GPU that supports it, else fp32."""
    import torch

    if preference == "auto":
        return "bf16" if device == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if preference == "fp16" and device != "cuda":
        raise UserError("train.precision: fp16 needs a CUDA device; use fp32 or bf16 on the CPU")
    return preference


def _local_model_dir(path: Path) -> Path:
    """A local model directory; a missing one must not fall through to a hub download."""
    if not (Path(path) / "config.json").is_file():
        raise UserError(f"{path}: no model there; run the stages before this one (uv run dvc repro)")
    return Path(path)


def load_model(path: Path, device: str = "cpu", attention: str = "sdpa") -> Any:
    """A causal LM from a local Hugging Face directory, safetensors only, no remote code."""
    from transformers import AutoModelForCausalLM

    path = _local_model_dir(path)
    model = AutoModelForCausalLM.from_pretrained(
        path, use_safetensors=True, trust_remote_code=False, dtype="float32",
        attn_implementation=attention,
    )
    return model.to(device)


def load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_local_model_dir(path), trust_remote_code=False)


def _scalars(summary: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in summary.items():
        if isinstance(value, dict):
            yield from _scalars(value, f"{prefix}{key}.")
        elif isinstance(value, (int, float, str)) and not isinstance(value, bool):
            yield f"{prefix}{key}", value


def _summary_line(name: str, summary: dict[str, Any], seconds: float) -> str:
    shown = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in _scalars(summary)]
    return f"{name}: " + ", ".join(shown[:10]) + f" ({seconds:.1f} s)"


def stage_main(
    name: str,
    run: Callable[[Params], dict[str, Any]],
    argv: list[str] | None = None,
    metrics_name: str | None = None,
    write_metrics: bool = True,
    pass_params_file: bool = False,
) -> None:
    """The thin CLI every stage shares: --params, validation before any work, one-line user
    errors with exit 1, the summary written to metrics/<stage>.json and printed."""
    parser = argparse.ArgumentParser(prog=f"python -m stages.{name}")
    parser.add_argument("--params", default="params.yaml", help="path to params.yaml")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        params = load(args.params)
        summary = run(params, params_file=args.params) if pass_params_file else run(params)
    except UserError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        sys.exit(1)
    metrics = PATHS.metrics / f"{metrics_name or name}.json"
    if "LOCAL_RANK" in os.environ:  # a torchrun worker: rank 0 hands the metrics to the launcher
        if write_metrics and os.environ.get("RANK") == "0":
            write_json(summary, metrics)
        return
    if write_metrics:
        write_json(summary, metrics)
    print(_summary_line(name, summary, time.perf_counter() - started))
