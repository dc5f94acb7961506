"""Benchmarks, side by side with the alternatives: `uv run python -m bench [--quick]`.

Writes bench/results.json and bench/results.md (the table the README quotes). Each figure is the
median of --repeats runs. Benchmarks are not tests: nothing here asserts a timing."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bench import corpus, model_bench

ROOT = Path(__file__).resolve().parents[1]
DATA_STAGES = ("ingest", "clean", "split", "tokenize")
TARGETS = {"cached_rerun_s": 2.0, "tokenize_vs_raw": 0.8, "data_path_vs_raw": 0.5,
           "peak_memory_gb": 3.0, "train_vs_tutorial": 1.3, "eval_vs_loop": 3.0}


def median_of(repeats: int, run: Callable[[], float]) -> float:
    return statistics.median(run() for _ in range(repeats))


def machine() -> dict[str, Any]:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                .splitlines() if line.startswith("model name")), platform.processor())
    return {"cores": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def run_stage(project: Path, stage: str) -> tuple[float, int]:
    """Run `python -m stages.<stage>` as the pipeline does; (seconds, peak RSS in bytes)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "true"}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", f"stages.{stage}"], cwd=project, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    if status != 0:
        raise RuntimeError(f"stage {stage} failed: {proc.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss * 1024


def make_project(where: Path, megabytes: float) -> tuple[Path, int]:
    """A project folder with a generated corpus and the base model, ready for the data stages."""
    project = where / f"corpus-{megabytes:g}mb"
    size = corpus.build(project / "data" / "raw", megabytes)
    shutil.copy(ROOT / "params.yaml", project / "params.yaml")
    shutil.copytree(model_bench.base_model_dir(where), project / "models" / "base")
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


def data_path(where: Path, megabytes: float, repeats: int) -> dict[str, Any]:
    project, size = make_project(where, megabytes)
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
    tokens = sum(v["tokens"] for k, v in json.loads(
        (project / "metrics" / "tokenize.json").read_text()).items() if isinstance(v, dict))
    total = sum(stages.values())
    shutil.rmtree(project)
    mb = size / 1e6
    return {"megabytes": round(mb, 1), "stage_seconds": {k: round(v, 2) for k, v in stages.items()},
            "data_path_seconds": round(total, 2), "data_path_mb_s": round(mb / total, 2),
            "data_path_tokens_s": round(tokens / total), "tokenize_mb_s": round(mb / stages["tokenize"], 2),
            "raw_seconds": round(raw_s, 2), "raw_mb_s": round(mb / raw_s, 2),
            "raw_tokens_s": round(raw_tokens / raw_s),
            "tokenize_vs_raw": round(raw_s / stages["tokenize"], 2),
            "data_path_vs_raw": round(raw_s / total, 2), "peak_memory_gb": round(peak / 1e9, 2)}


def cached_rerun(where: Path, repeats: int) -> dict[str, Any]:
    """`dvc repro` with nothing to do, in a copy of this project run once with a tiny model."""
    from tests.test_pipeline import TINY, merge, project_files, sh

    project = where / "cached"
    for name in project_files():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, project / name)
    params = merge(yaml.safe_load((project / "params.yaml").read_text()), TINY)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(project, "git", "init", "-q")
    sh(project, "git", "add", "-A")
    sh(project, "git", "commit", "-qm", "bench")
    sh(project, "dvc", "repro")

    def once() -> float:
        started = time.perf_counter()
        assert "Running stage" not in sh(project, "dvc", "repro").stdout
        return time.perf_counter() - started

    return {"cached_rerun_s": round(median_of(repeats, once), 2)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a small version, under two minutes")
    parser.add_argument("--repeats", type=int, default=None, help="runs per figure (median)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    sizes = (1.0, 2.0, 4.0) if args.quick else (50.0, 100.0, 200.0)
    results: dict[str, Any] = {"machine": machine(), "quick": args.quick, "repeats": repeats,
                               "targets": TARGETS}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        where = Path(tmp)
        results |= cached_rerun(where, repeats)
        print(f"cached rerun: {results['cached_rerun_s']} s", flush=True)
        scaling = {}
        for size in sizes:
            scaling[size] = data_path(where, size, repeats if size == sizes[-1] else 1)
            print(f"data path {size:g} MB: {scaling[size]}", flush=True)
        results["data_path"] = scaling[sizes[-1]]
        results["scaling"] = {f"{s:g}": {"megabytes": r["megabytes"],
                                         "seconds": r["data_path_seconds"],
                                         "seconds_per_mb": round(r["data_path_seconds"] / r["megabytes"], 3)}
                              for s, r in scaling.items()}
        results["train"] = model_bench.train_throughput(where, args.quick, repeats)
        print(f"train: {results['train']}", flush=True)
        results["eval"] = model_bench.eval_throughput(where, args.quick, repeats)
        print(f"eval: {results['eval']}", flush=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    table = model_bench.markdown(results)
    args.out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
