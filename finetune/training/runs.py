"""What the train stage settles before training, without loading the Trainer or peft (seconds of
imports): whether this machine can run the method, which run a checkpoint belongs to and where a
killed run resumes, and the torchrun launcher, which only starts the processes that train."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from finetune.config.train import TrainParams
from finetune.errors import UserError
from finetune.files import remove, write_json
from finetune.imports import closure
from finetune.models.loading import compute_dtype, pick_device, pick_precision
from finetune.paths import Paths

COMPLETE = "COMPLETE"  # written into a checkpoint once the Trainer has finished saving it
RUN_FILE = "run.json"  # the fingerprint of the run the checkpoints belong to
NOT_IN_FINGERPRINT = {"save_steps", "keep_checkpoints"}  # they do not change the result
STAGE = "stages.train"  # the entry point torchrun starts, and whose code a checkpoint belongs to
ROOT = Path(__file__).resolve().parents[2]  # the project
RESUME_ENV = "FINETUNE_RESUME_FROM"  # the launcher's resume decision, handed to every worker
QLORA_HELP = "uv sync --group qlora (or uv run --group qlora dvc repro)"


def check_method(p: TrainParams) -> None:
    """What the method needs and this machine lacks, in one line before any work: for qlora,
    bitsandbytes (an optional group) and a 4-bit backend for the device, both tried here."""
    if p.method != "qlora":
        return
    device = pick_device(p.device)
    precision = pick_precision(p.precision, device)
    try:
        import bitsandbytes
        from bitsandbytes.functional import dequantize_4bit, quantize_4bit
    except ImportError:
        raise UserError(f"train.method: qlora needs bitsandbytes, in the optional qlora group: "
                        f"{QLORA_HELP}") from None
    import torch

    try:  # the backend this device has, measured on a small matrix
        probe = torch.linspace(-1, 1, 64 * 64, dtype=compute_dtype(precision), device=device).view(64, 64)
        packed, state = quantize_4bit(probe, quant_type="nf4")
        back = dequantize_4bit(packed, state)
        assert back.shape == probe.shape and float((back - probe).abs().max()) < 0.25
    except Exception as e:
        raise UserError(f"train.method: qlora: bitsandbytes {bitsandbytes.__version__} cannot run "
                        f"4-bit on {device} here ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                        "use train.method: lora, or a CUDA GPU") from None


def fingerprint(seed: int, p: TrainParams, paths: Paths) -> str:
    """What a checkpoint depends on: the train params that change the result, the seed, the code
    the train stage runs (every project module it imports, as dvc.yaml lists them), the
    libraries it drives, and the bytes of the base model and of the train and val sets."""
    digest = hashlib.sha256(p.model_dump_json(exclude=NOT_IN_FINGERPRINT).encode())
    digest.update(str(seed).encode())
    for source in closure(STAGE):
        digest.update(source.as_posix().encode())
        digest.update((ROOT / source).read_bytes())
    for library in ("torch", "transformers", "peft", "accelerate"):
        digest.update(importlib.metadata.version(library).encode())
    for root in (paths.base_model, paths.tokenized / "train", paths.tokenized / "val"):
        for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
            digest.update(path.relative_to(root).as_posix().encode())
            with path.open("rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
    return digest.hexdigest()


def checkpoint_step(path: Path) -> int:
    return int(path.name.removeprefix("checkpoint-"))


def resume_point(directory: Path, run_id: str) -> Path | None:
    """The last complete checkpoint of this same unfinished run, if there is one. Checkpoints of
    another run (other params, inputs or code), of a finished run (kept by keep_checkpoints), and
    incomplete ones (killed mid-save) are removed."""
    try:
        run = json.loads((directory / RUN_FILE).read_text())
        same_run = run["fingerprint"] == run_id and not run.get("finished")
    except (OSError, ValueError, KeyError, TypeError):
        same_run = False
    if not same_run:
        if directory.exists():
            print(f"train: {directory} holds checkpoints of another run; starting afresh")
        remove(directory)
        write_json({"fingerprint": run_id}, directory / RUN_FILE)
        return None
    checkpoints = sorted(directory.glob("checkpoint-*"), key=checkpoint_step)
    complete = [c for c in checkpoints if (c / COMPLETE).is_file()]
    for partial in set(checkpoints) - set(complete):
        remove(partial)
    return complete[-1] if complete else None


def total_steps(p: TrainParams, n_examples: int) -> int:
    """The optimizer steps the Trainer will take for this many training examples."""
    if p.max_steps > 0:
        return p.max_steps
    batches = math.ceil(n_examples / (p.batch_size * p.num_processes))  # per process
    per_epoch = math.ceil(batches / p.gradient_accumulation_steps)
    return math.ceil(p.num_epochs * per_epoch)


def check_warmup(p: TrainParams, n_examples: int) -> None:
    steps = total_steps(p, n_examples)
    if p.warmup_steps and p.warmup_steps >= steps:
        raise UserError(f"train.warmup_steps: {p.warmup_steps} warmup steps are not fewer than the "
                        f"{steps} training steps ({n_examples} examples, train.batch_size "
                        f"{p.batch_size}, train.num_epochs {p.num_epochs:g})")


def resume_for(seed: int, p: TrainParams, paths: Paths) -> Path | None:
    """Check the params against the data, then find the checkpoint to resume from (if any)."""
    import datasets

    check_warmup(p, len(datasets.load_from_disk(str(paths.tokenized / "train"))))
    return resume_point(paths.checkpoints, fingerprint(seed, p, paths))


def launch(seed: int, p: TrainParams, paths: Paths, params_file: str) -> dict[str, Any]:
    """`train.num_processes` > 1: this stage again under torchrun, one process per GPU (or CPU
    process), DDP or FSDP. The launcher settles the checkpoints first, so the workers agree on
    where to resume; rank 0 writes the model and metrics/train_details.json, which is returned."""
    metrics = paths.details_file("train")
    remove(metrics)  # what rank 0 writes, not a stale file, is the result
    resume = resume_for(seed, p, paths)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={p.num_processes}", "-m", STAGE,
               "--params", params_file]
    env = {**os.environ, RESUME_ENV: str(resume or "")}
    if subprocess.run(command, env=env).returncode != 0 or not metrics.is_file():
        raise UserError(f"the {p.num_processes} torchrun processes failed "
                        "(their errors are above)")
    return json.loads(metrics.read_text())
