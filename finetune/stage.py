"""The command line every stage shares: --params, validation before any work, one-line user
errors, the summary written to metrics/<stage>.json and printed."""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from finetune.config.schema import Params, load
from finetune.errors import UserError
from finetune.files import write_json
from finetune.headline import HEADLINE, headline
from finetune.paths import PATHS, Paths


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
    shown = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in _scalars(summary)]
    return (f"{name}: " + ", ".join(shown[:10])
            + f" ({seconds:.1f} s, peak memory {peak_memory_mb():,.0f} MB)")


def write_summary(name: str, summary: dict[str, Any], paths: Paths = PATHS) -> None:
    """metrics/<name>.json; for the stages with headline figures (finetune.headline), those go
    there and the whole summary to metrics/<name>_details.json."""
    if name in HEADLINE:
        write_json(summary, paths.details_file(name))
        summary = headline(name, summary)
    write_json(summary, paths.metrics / f"{name}.json")


def stage_main(
    name: str,
    run: Callable[[Params], dict[str, Any]],
    argv: list[str] | None = None,
    metrics_name: str | None = None,
    write_metrics: bool = True,
    pass_params_file: bool = False,
) -> None:
    """The thin CLI every stage shares: --params, validation before any work, one-line user
    errors with exit 1, the summary written to metrics/<stage>.json (write_summary) and printed."""
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
    if "LOCAL_RANK" in os.environ:  # a torchrun worker: rank 0 hands the metrics to the launcher
        if write_metrics and os.environ.get("RANK") == "0":
            write_summary(metrics_name or name, summary)
        return
    if write_metrics:
        write_summary(metrics_name or name, summary)
    print(_summary_line(name, summary, time.perf_counter() - started))
