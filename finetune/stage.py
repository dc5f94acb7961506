"""The command line every stage shares: --params, validation before any work, one-line user
errors, the summary written to metrics/<stage>.json and printed."""

from __future__ import annotations

import argparse
import inspect
import os
import resource
import sys
import time
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from finetune.cli import exit_now, running_as
from finetune.config.loading import Key, load
from finetune.errors import UserError
from finetune.files import write_json
from finetune.paths import PATHS, Paths
from finetune.restore import restore_outputs


def _scalars(summary: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in summary.items():
        if isinstance(value, dict):
            yield from _scalars(value, f"{prefix}{key}.")
        elif isinstance(value, (int, float, str)) and not isinstance(value, bool):
            yield f"{prefix}{key}", value


def peak_memory_mb() -> float:
    """The peak resident memory of this process (not of its worker processes), in MB: VmHWM,
    which starts afresh at exec, unlike ru_maxrss, which keeps the parent's size after a fork."""
    try:
        status = Path("/proc/self/status").read_text()
        return next(int(line.split()[1]) for line in status.splitlines()
                    if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (1024**2 if sys.platform == "darwin" else 1024)  # bytes or KiB


def _summary_line(name: str, summary: dict[str, Any], seconds: float) -> str:
    shown = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
             for k, v in _scalars({k: v for k, v in summary.items() if k != PARAMS})]
    return (f"{name}: " + ", ".join(shown[:10])
            + f" ({seconds:.1f} s, peak memory {peak_memory_mb():,.0f} MB)")


def _get(summary: dict[str, Any], where: tuple[str, ...]) -> Any:
    value: Any = summary
    for key in where:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def headline(figures: dict[str, tuple[str, ...]], summary: dict[str, Any]) -> dict[str, Any]:
    """The headline figures ({name: where it is in the summary}) of a stage's summary; those
    absent from it are left out."""
    found = {key: _get(summary, where) for key, where in figures.items()}
    return {key: value for key, value in found.items() if value is not None}


def write_summary(name: str, summary: dict[str, Any], paths: Paths = PATHS,
                  figures: dict[str, tuple[str, ...]] | None = None) -> None:
    """metrics/<name>.json; for a stage with headline `figures` (train, evaluate: what `dvc exp
    show` shows of a run), those go there and the whole summary to metrics/<name>_details.json."""
    if figures is not None:
        write_json(summary, paths.details_file(name))
        summary = headline(figures, summary)
    write_json(summary, paths.metrics / f"{name}.json")


PARAMS = "params"  # the summary's record of the params the stage ran with, for the report
NOT_PARAMS = {"paths", "params_file"}


def run_schema(run: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """What a stage's run() reads of params.yaml, by parameter (all of them but paths): a
    top-level key or section named like the parameter, with its type, or a Key of a section."""
    hints = typing.get_type_hints(run, include_extras=True)
    schema: dict[str, Any] = {}
    for name in inspect.signature(run).parameters:
        if name in NOT_PARAMS:
            continue
        keys = [m for m in getattr(hints[name], "__metadata__", ()) if isinstance(m, Key)]
        schema[name] = keys[0] if keys else hints[name]
    return schema


def params_keys(run: Callable[..., dict[str, Any]]) -> list[str]:
    """The params.yaml keys a stage reads, as dvc.yaml lists them (ingest, ingest.on_error)."""
    return [kind.dotted if isinstance(kind, Key) else name for name, kind in run_schema(run).items()]


def as_record(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v.model_dump(mode="json") if isinstance(v, BaseModel) else v
            for k, v in values.items()}


def put_back(name: str) -> None:
    """After a failure, the outputs DVC removed before the run, as they were (finetune.restore)."""
    restored = restore_outputs()
    if restored:
        print(f"{name}: put back the outputs of the last run: {', '.join(restored)}",
              file=sys.stderr)


def stage_main(
    name: str,
    run: Callable[..., dict[str, Any]],
    argv: list[str] | None = None,
    metrics_name: str | None = None,
    write_metrics: bool = True,
    pass_params_file: bool = False,
    figures: dict[str, tuple[str, ...]] | None = None,
    record_params: bool = True,
) -> None:
    """The thin CLI every stage shares: --params; the params.yaml keys run() takes (its
    parameters, named as in params.yaml) validated before any work, and only those; one-line
    user errors with exit 1; the summary, with the params it ran with unless `record_params` is
    off, written to metrics/<stage>.json (write_summary) and printed. Run as `python -m
    stages.<name>`, the process then ends without the interpreter's teardown (exit_now)."""
    parser = argparse.ArgumentParser(prog=f"python -m stages.{name}")
    parser.add_argument("--params", default="params.yaml", help="path to params.yaml")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    schema = run_schema(run)
    try:
        values = load(args.params, schema)
        extra = {"params_file": args.params} if pass_params_file else {}
        summary = run(**values, **extra)
    except UserError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        put_back(name)
        sys.exit(1)
    except BaseException:  # a crash or Ctrl-C: the outputs DVC removed come back all the same
        put_back(name)
        raise
    if record_params:
        keys = dict(zip(schema, params_keys(run), strict=True))
        summary[PARAMS] = as_record({keys[k]: v for k, v in values.items() if k != "num_proc"})
    if "LOCAL_RANK" in os.environ:  # a torchrun worker: rank 0 hands the metrics to the launcher
        if write_metrics and os.environ.get("RANK") == "0":
            write_summary(metrics_name or name, summary, figures=figures)
        return
    if write_metrics:
        write_summary(metrics_name or name, summary, figures=figures)
    print(_summary_line(name, summary, time.perf_counter() - started))
    if running_as(f"stages.{name}"):  # as dvc repro runs it: its outputs are written
        exit_now(0)
