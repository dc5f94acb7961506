"""Benchmarks, side by side with the alternatives: `uv run python -m bench [--quick | --smoke]`.

Writes bench/results.json and the top of bench/results.md (the table the README quotes; the
sections the other benchmarks write below it are kept). Each figure is the median of --repeats
runs. Benchmarks are not tests: nothing here asserts a timing."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench import corpus, model_bench
from bench.common import (
    ROOT,
    TINY_PROJECT,
    base_model_dir,
    merge,
    run_stage,
    tiny_base,
    tokenized_tokens,
    write_head,
)

DATA_STAGES = ("ingest", "clean", "split", "tokenize")
TARGETS = {"cached_rerun_s": 2.0, "tokenize_vs_raw": 0.8, "data_path_vs_raw": 0.5,
           "peak_memory_gb": 3.0, "train_vs_tutorial": 1.3, "eval_vs_loop": 3.0}
GIT_ENV = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.com",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.com"}


@dataclass(frozen=True)
class Scale:
    """How large a run is."""

    sizes: tuple[float, ...]  # corpus sizes of the data path in MB; the last one is the headline
    quick: bool  # a tiny model with the base model's tokenizer instead of the base model
    repeats: int  # runs per figure unless --repeats says
    train_tokens: int | None = None  # real tokens per training run (None: model_bench's default)
    eval_examples: int | None = None  # blocks scored (None: model_bench's default)
    cached_target: str | None = None  # the stage the cached `dvc repro` runs to (None: all)


SCALES = {
    "full": Scale((50.0, 100.0, 200.0), quick=False, repeats=3),
    "quick": Scale((1.0, 2.0, 4.0), quick=True, repeats=1),
    # every code path once, in half a minute, for tests/test_bench.py: its figures mean nothing
    "smoke": Scale((0.05,), quick=True, repeats=1, train_tokens=256, eval_examples=4,
                   cached_target="ingest"),
}


def median_of(repeats: int, run: Callable[[], float]) -> float:
    return statistics.median(run() for _ in range(repeats))


def machine() -> dict[str, Any]:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                .splitlines() if line.startswith("model name")), platform.processor())
    return {"cores": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def make_project(where: Path, megabytes: float, base: Path) -> tuple[Path, int]:
    """A project folder with a generated corpus and the base model, ready for the data stages."""
    project = where / f"corpus-{megabytes:g}mb"
    size = corpus.build(project / "data" / "raw", megabytes)
    shutil.copy(ROOT / "params.yaml", project / "params.yaml")
    shutil.copytree(base, project / "models" / "base")
    return project, size


def raw_tokenizer_seconds(project: Path) -> tuple[float, int]:
    """The practical limit: tokenizers' encode_batch over the same text, same tokenizer."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(project / "models" / "base" / "tokenizer.json"))
    texts = [p for f in sorted((project / "data" / "raw").iterdir())
             for p in f.read_text(encoding="utf-8").split("\n\n")]
    started = time.perf_counter()
    tokens = sum(len(e.ids) for start in range(0, len(texts), 4096)
                 for e in tokenizer.encode_batch(texts[start:start + 4096], add_special_tokens=False))
    return time.perf_counter() - started, tokens


def data_path(where: Path, megabytes: float, repeats: int, base: Path) -> dict[str, Any]:
    """The data stages (`python -m stages.<name>`) on a generated corpus of `megabytes` MB,
    against the same tokenizer's raw encode_batch over the same text."""
    project, size = make_project(where, megabytes, base)
    stage_runs: dict[str, list[float]] = {s: [] for s in DATA_STAGES}
    peak = 0
    for _ in range(repeats):
        for stage in DATA_STAGES:
            seconds, rss = run_stage(project, stage)
            stage_runs[stage].append(seconds)
            peak = max(peak, rss)
    raw_runs = [raw_tokenizer_seconds(project) for _ in range(repeats)]
    raw_s, raw_tokens = statistics.median(r[0] for r in raw_runs), raw_runs[0][1]
    stages = {s: statistics.median(v) for s, v in stage_runs.items()}
    tokens = tokenized_tokens(project)
    total = sum(stages.values())
    shutil.rmtree(project)
    mb = size / 1e6
    return {"megabytes": round(mb, 1), "stage_seconds": {k: round(v, 2) for k, v in stages.items()},
            "data_path_seconds": round(total, 2), "data_path_mb_s": significant(mb / total),
            "data_path_tokens_s": round(tokens / total),
            "tokenize_mb_s": significant(mb / stages["tokenize"]),
            "raw_seconds": round(raw_s, 2), "raw_mb_s": significant(mb / raw_s),
            "raw_tokens_s": round(raw_tokens / raw_s),
            "tokenize_vs_raw": significant(raw_s / stages["tokenize"]),
            "data_path_vs_raw": significant(raw_s / total), "peak_memory_gb": round(peak / 1e9, 2)}


def significant(value: float) -> float:
    """Three significant digits: a ratio far below its target (a tiny --smoke corpus, where the
    stage's start-up is most of its time) stays a figure instead of rounding to 0.0."""
    return float(f"{value:.3g}")


def sh(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A command (git, dvc) in `cwd`, with this environment's scripts first on PATH."""
    scripts = Path(sys.executable).parent
    env = {**os.environ, **GIT_ENV, "PATH": f"{scripts}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{' '.join(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result


def tiny_project(project: Path) -> Path:
    """A copy of this project as a fresh clone holds it (the files git tracks, staged ones
    included), with the TINY_PROJECT params, committed in its own git repository."""
    listed = sh(ROOT, "git", "ls-files").stdout.splitlines()
    for name in (f for f in listed if (ROOT / f).is_file()):
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, project / name)
    params = merge(yaml.safe_load((project / "params.yaml").read_text()), TINY_PROJECT)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(project, "git", "init", "-q")
    sh(project, "git", "add", "-A")
    sh(project, "git", "commit", "-qm", "bench")
    return project


def cached_rerun(where: Path, repeats: int, target: str | None = None) -> dict[str, Any]:
    """`dvc repro` with nothing to do but the inputs stage (which checks the data), in a copy of
    this project run once with a tiny model (up to the `target` stage, else whole)."""
    project = tiny_project(where / "cached")
    targets = [target] if target else []
    sh(project, "dvc", "repro", *targets)

    def once() -> float:
        started = time.perf_counter()
        out = sh(project, "dvc", "repro", *targets).stdout
        seconds = time.perf_counter() - started
        ran = set(re.findall(r"Running stage '([^']+)'", out)) - {"inputs"}  # inputs always runs
        if ran:
            raise RuntimeError(f"a second `dvc repro` ran {sorted(ran)} again:\n{out[-2000:]}")
        return seconds

    return {"cached_rerun_s": round(median_of(repeats, once), 2)}


def run(where: Path, scale: Scale, repeats: int, base: Path) -> dict[str, Any]:
    """Every figure of results.json, worked out in the scratch folder `where`."""
    results: dict[str, Any] = {"cached_rerun_s": cached_rerun(where, repeats, scale.cached_target)
                               ["cached_rerun_s"]}
    print(f"cached rerun: {results['cached_rerun_s']} s", flush=True)
    scaling = {}
    for size in scale.sizes:
        scaling[size] = data_path(where, size, repeats if size == scale.sizes[-1] else 1, base)
        print(f"data path {size:g} MB: {scaling[size]}", flush=True)
    results["data_path"] = scaling[scale.sizes[-1]]
    results["scaling"] = {f"{s:g}": {"megabytes": r["megabytes"], "seconds": r["data_path_seconds"],
                                     "seconds_per_mb": round(r["data_path_seconds"] / r["megabytes"], 3)}
                          for s, r in scaling.items()}
    results["train"] = model_bench.train_throughput(base, scale.quick, repeats, scale.train_tokens)
    print(f"train: {results['train']}", flush=True)
    results["eval"] = model_bench.eval_throughput(base, scale.quick, repeats, scale.eval_examples)
    print(f"eval: {results['eval']}", flush=True)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help="a small version: a tiny model, 1-4 MB corpora (a few minutes)")
    size.add_argument("--smoke", action="store_true",
                      help="every code path once, as small as it goes (tests/test_bench.py); "
                      "its figures mean nothing")
    parser.add_argument("--repeats", type=int, default=None, help="runs per figure (median)")
    parser.add_argument("--base", type=Path, default=None,
                        help="the base model folder (default: models/base, else one built by the "
                        "base_model stage; --smoke: bench.common.tiny_base); --quick and --smoke "
                        "use only its tokenizer")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json",
                        help="the figures; the table goes to the .md beside it")
    args = parser.parse_args(argv)
    scale = SCALES["smoke" if args.smoke else "quick" if args.quick else "full"]
    repeats = args.repeats or scale.repeats
    results: dict[str, Any] = {"machine": machine(), "quick": scale.quick, "smoke": args.smoke,
                               "repeats": repeats, "targets": TARGETS}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        where = Path(tmp)
        base = (args.base or tiny_base(where / "tiny-base")) if args.smoke else (
            base_model_dir(where, args.base))
        results |= run(where, scale, repeats, base)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    table = model_bench.markdown(results)
    write_head(args.out.with_suffix(".md"), table)
    print(table)


if __name__ == "__main__":
    main()
