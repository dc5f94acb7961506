"""The data stages on a corpus larger than memory would comfortably hold as Python objects:
`uv run python -m bench.large_corpus [--gb 2]` (`--gb 0.001 --model-source scratch`: a smoke run).

Generates the corpus (bench/corpus.py) in a scratch project, runs ingest, clean, split,
base_model and tokenize as the pipeline does (`python -m stages.<name>`), and records each
stage's time and the peak memory of the stage process and its workers together, sampled every
0.2 s: the anonymous memory they hold, and the resident total, which adds pages of memory-mapped
files that the kernel can drop. Writes bench/large_corpus.json and bench/large_corpus.md."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

from bench import corpus
from bench.common import ROOT, tokenized_tokens

STAGES = ("ingest", "clean", "split", "scratch_texts", "base_model", "tokenize")


def tree_memory(process: psutil.Process) -> tuple[int, int]:
    """(resident, anonymous) bytes of a process and all its descendants. Anonymous memory is what
    the processes hold themselves; resident adds file pages they map, such as the memory-mapped
    Arrow files that tokenize writes and reads, which the kernel can drop at any time."""
    rss = anon = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            status = Path(f"/proc/{p.pid}/status").read_text()
        except OSError:  # a worker that just ended
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        rss += int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
        anon += int(fields.get("RssAnon", "0 kB").split()[0]) * 1024
    return rss, anon


def run_stage(project: Path, stage: str) -> tuple[float, int, int, str]:
    """`python -m stages.<stage>` in `project`: (seconds, peak resident and peak anonymous bytes
    of its process tree, the stage's summary line)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", f"stages.{stage}"], cwd=project, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak_rss = peak_anon = 0
    watched = psutil.Process(proc.pid)

    def sample() -> None:
        nonlocal peak_rss, peak_anon
        while proc.poll() is None:
            try:
                rss, anon = tree_memory(watched)
            except psutil.Error:
                return
            peak_rss, peak_anon = max(peak_rss, rss), max(peak_anon, anon)
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - started
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"stage {stage} failed: {err[-2000:]}")
    return seconds, peak_rss, peak_anon, out.strip().splitlines()[-1]


def make_project(where: Path, gigabytes: float, num_proc: int, model_source: str | None = None
                 ) -> tuple[Path, int, int]:
    """A scratch project with a generated corpus in data/raw and this project's params (but
    num_proc and, if given, model.source): (folder, bytes, files)."""
    project = where / "large-corpus"
    size = corpus.build(project / "data" / "raw", gigabytes * 1000, doc_bytes=1_000_000)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["num_proc"] = num_proc
    if model_source:
        params["model"]["source"] = model_source
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return project, size, len(list((project / "data" / "raw").iterdir()))


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else (
        path.stat().st_size)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.large_corpus", description=__doc__)
    parser.add_argument("--gb", type=float, default=2.0, help="corpus size in GB (10^9 bytes)")
    parser.add_argument("--num-proc", type=int, default=0, help="params num_proc (0: all cores)")
    parser.add_argument("--where", type=Path, default=None, help="scratch folder (default: /tmp)")
    parser.add_argument("--model-source", default=None,
                        help="params model.source (default params.yaml's; scratch: a tiny model)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "large_corpus.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-large-", dir=args.where) as tmp:
        started = time.perf_counter()
        project, size, files = make_project(Path(tmp), args.gb, args.num_proc, args.model_source)
        print(f"corpus: {size / 1e9:.2f} GB in {files} files "
              f"({time.perf_counter() - started:.0f} s to generate)", flush=True)
        stages: dict[str, Any] = {}
        for stage in STAGES:
            seconds, rss, anon, line = run_stage(project, stage)
            stages[stage] = {"seconds": round(seconds, 1), "peak_memory_gb": round(anon / 1e9, 2),
                             "peak_resident_gb": round(rss / 1e9, 2)}
            print(f"{stage}: {seconds:.0f} s, peak {anon / 1e9:.2f} GB anonymous, "
                  f"{rss / 1e9:.2f} GB resident | {line}", flush=True)
        passages = json.loads((project / "metrics" / "clean.json").read_text())["records_out"]
        tokens = tokenized_tokens(project)
        outputs = {"ingested": "data/interim/ingested.parquet", "clean": "data/interim/clean.parquet",
                   "processed": "data/processed", "tokenized": "data/tokenized"}
        sizes = {k: round(disk_bytes(project / v) / 1e9, 2) for k, v in outputs.items()}
        shutil.rmtree(project)
    data_stages = [s for s in STAGES if s not in ("scratch_texts", "base_model")]
    results = {
        "machine": {"cores": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 1e9, 1)},
        "num_proc": args.num_proc, "corpus_gb": round(size / 1e9, 2), "files": files,
        "passages": passages,
        "tokens": tokens,
        "stages": stages, "output_gb": sizes,
        "data_stage_seconds": round(sum(stages[s]["seconds"] for s in data_stages), 1),
        "peak_memory_gb": max(stages[s]["peak_memory_gb"] for s in data_stages),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))


def markdown(r: dict[str, Any]) -> str:
    lines = [f"Generated corpus: {r['corpus_gb']} GB in {r['files']} files, "
             f"{r['passages']:,} passages, {r['tokens']:,} tokens; machine: "
             f"{r['machine']['cores']} cores, {r['machine']['memory_gb']} GB; num_proc "
             f"{r['num_proc'] or 'auto'}.", "",
             "| stage | time | peak memory held (process + workers) | peak resident, with "
             "mapped files |", "|---|---|---|---|"]
    lines += [f"| {name} | {v['seconds']} s | {v['peak_memory_gb']} GB | {v['peak_resident_gb']} GB |"
              for name, v in r["stages"].items()]
    lines += ["", f"Data stages (ingest, clean, split, tokenize): {r['data_stage_seconds']} s, "
              f"peak {r['peak_memory_gb']} GB. Output on disk: "
              + ", ".join(f"{k} {v} GB" for k, v in r["output_gb"].items()) + ".", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
