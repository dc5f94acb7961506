"""Fine-tune models/base on data/tokenized/train with the Hugging Face Trainer, evaluating on
data/tokenized/val; write models/finetuned/ (safetensors + tokenizer), the loss curves
(DVCLive, under dvclive/train) and metrics/train.json. Params: `seed`, `train`.

Every `train.save_steps` steps a checkpoint (model, optimizer, scheduler, RNG, data position)
goes to models/checkpoints/; a run that was killed resumes from the last complete one, provided
it belongs to the same params and inputs."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from stages.io import (
    atomic_output,
    load_model,
    load_tokenizer,
    pick_device,
    pick_precision,
    remove,
    stage_main,
    write_json,
)
from stages.params import PATHS, Params, Paths, TrainParams, UserError

LOGGED = {"loss": "train/loss", "eval_loss": "eval/loss", "learning_rate": "train/learning_rate"}
COMPLETE = "COMPLETE"  # written into a checkpoint once the Trainer has finished saving it
RUN_FILE = "run.json"  # the fingerprint of the run the checkpoints belong to
NOT_IN_FINGERPRINT = {"save_steps", "keep_checkpoints"}  # they do not change the result


class LiveLosses(TrainerCallback):
    """Sends the train and eval losses (and nothing else) to DVCLive at each logging step."""

    def __init__(self, live: Any) -> None:
        self.live = live

    def _log(self, step: int, logs: dict[str, Any]) -> None:
        self.live.step = step
        for key, name in LOGGED.items():
            if key in logs:
                self.live.log_metric(name, float(logs[key]))

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # A resumed run starts with the checkpoint's history: put it back into the fresh log.
        if state.is_world_process_zero:
            for entry in state.log_history:
                self._log(entry["step"], entry)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None,
               **kwargs: Any) -> None:
        if state.is_world_process_zero and logs:
            self._log(state.global_step, logs)


class CompleteCheckpoints(TrainerCallback):
    """Marks a checkpoint complete after the Trainer saved it, then removes the older ones (but
    not the best one, which early stopping reloads), so one complete checkpoint always exists."""

    def __init__(self, keep_last: bool) -> None:
        self.keep_last = keep_last

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # The Trainer also checkpoints the last step; unless checkpoints are kept, that is a
        # model-and-optimizer write that is deleted right after, since models/finetuned follows.
        if state.global_step >= state.max_steps and not self.keep_last:
            control.should_save = False

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        current = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        (current / COMPLETE).touch()
        keep = {current.resolve()}
        if state.best_model_checkpoint:
            keep.add(Path(state.best_model_checkpoint).resolve())
        for old in Path(args.output_dir).glob("checkpoint-*"):
            if old.resolve() not in keep:
                shutil.rmtree(old)


def fingerprint(params: Params, paths: Paths) -> str:
    """What a checkpoint depends on: the train params that change the result, the seed, and the
    bytes of the base model and of the train and val sets."""
    digest = hashlib.sha256(params.train.model_dump_json(exclude=NOT_IN_FINGERPRINT).encode())
    digest.update(str(params.seed).encode())
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
    """The last complete checkpoint of this same run, if there is one. Checkpoints of another run
    (other params or inputs) and incomplete ones (killed mid-save) are removed."""
    try:
        same_run = json.loads((directory / RUN_FILE).read_text())["fingerprint"] == run_id
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
    per_epoch = math.ceil(math.ceil(n_examples / p.batch_size) / p.gradient_accumulation_steps)
    return math.ceil(p.num_epochs * per_epoch)


def check_warmup(p: TrainParams, n_examples: int) -> None:
    steps = total_steps(p, n_examples)
    if p.warmup_steps and p.warmup_steps >= steps:
        raise UserError(f"train.warmup_steps: {p.warmup_steps} warmup steps are not fewer than the "
                        f"{steps} training steps ({n_examples} examples, train.batch_size "
                        f"{p.batch_size}, train.num_epochs {p.num_epochs:g})")


def open_live(directory: Path) -> Any:
    """A DVCLive logger that writes the loss histories only (no dvc.yaml, no experiment of its
    own: DVC's pipeline and `dvc exp` own those)."""
    from scmrepo.exceptions import SCMError

    from dvclive import Live

    try:
        return Live(dir=str(directory), save_dvc_exp=False, dvcyaml=None)
    except SCMError as e:  # DVCLive reads the baseline commit; a new repository has none
        raise UserError(f"git: {e}; make a first commit (git add -A && git commit) and rerun") from None


def collator(tokenizer: Any) -> Any:
    """Pads input_ids with the pad token and labels with -100 (pairs have varied lengths)."""
    from transformers import DataCollatorForSeq2Seq

    return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, padding=True)


def freeze(model: Any, n_layers: int) -> None:
    """Freeze the embeddings and the first n_layers transformer blocks (nothing when 0)."""
    import torch

    if n_layers == 0:
        return
    blocks = next((m for m in model.modules() if isinstance(m, torch.nn.ModuleList)
                   and len(m) == model.config.num_hidden_layers), None)
    if blocks is None:
        raise RuntimeError(f"no list of {model.config.num_hidden_layers} blocks in the model")
    if n_layers > len(blocks):
        raise UserError(f"train.freeze_layers: {n_layers} is more than the model's "
                        f"{len(blocks)} blocks")
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            module.requires_grad_(False)
    for block in blocks[:n_layers]:
        block.requires_grad_(False)


def training_args(p: TrainParams, seed: int, device: str, precision: str, out: Path,
                  resuming: bool = False) -> Any:
    from transformers import TrainingArguments

    early = p.early_stopping_patience > 0
    return TrainingArguments(
        output_dir=str(out), seed=seed, data_seed=seed,
        learning_rate=p.learning_rate, num_train_epochs=p.num_epochs, max_steps=p.max_steps,
        per_device_train_batch_size=p.batch_size, per_device_eval_batch_size=p.batch_size,
        gradient_accumulation_steps=p.gradient_accumulation_steps,
        # transformers 5: a float below 1 is a ratio of the training steps, an int a step count
        warmup_steps=p.warmup_steps or float(p.warmup_ratio), weight_decay=p.weight_decay,
        lr_scheduler_type=p.lr_scheduler, activation_checkpointing=p.gradient_checkpointing,
        # the curve starts at the base model; a resumed run has that point from its checkpoint
        eval_strategy="steps", eval_steps=p.eval_steps, eval_on_start=not resuming,
        logging_steps=p.logging_steps,
        save_strategy="steps", save_steps=p.save_steps, save_total_limit=None,  # see CompleteCheckpoints
        restore_callback_states_from_checkpoint=True, load_best_model_at_end=early,
        metric_for_best_model="eval_loss", greater_is_better=False,
        use_cpu=device == "cpu", bf16=precision == "bf16", fp16=precision == "fp16",
        include_num_input_tokens_seen="non_padding", report_to="none",
        dataloader_num_workers=0,
    )


def environment(device: str, precision: str) -> dict[str, str]:
    """What a result depends on beyond code, data and params, so that a difference between two
    machines shows up next to the metrics instead of staying a mystery."""
    import importlib.metadata
    import platform

    import torch

    env = {"python": platform.python_version(),
           **{name: importlib.metadata.version(name) for name in ("torch", "transformers", "dvc")},
           "device": device, "precision": precision}
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
    return env


def last(history: list[dict[str, Any]], key: str) -> float | None:
    return next((float(h[key]) for h in reversed(history) if key in h), None)


def run(params: Params, paths: Paths = PATHS) -> dict[str, Any]:
    import datasets
    from transformers import EarlyStoppingCallback, Trainer, set_seed


    p = params.train
    device = pick_device(p.device)
    precision = pick_precision(p.precision, device)
    train_set = datasets.load_from_disk(str(paths.tokenized / "train"))
    val_set = datasets.load_from_disk(str(paths.tokenized / "val"))
    check_warmup(p, len(train_set))
    resume = resume_point(paths.checkpoints, fingerprint(params, paths))
    tokens_before = 0
    if resume:
        state = json.loads((resume / "trainer_state.json").read_text())
        tokens_before = int(state.get("num_input_tokens_seen", 0))
        print(f"train: resuming from {resume} (step {checkpoint_step(resume)})")
    set_seed(params.seed)
    tokenizer = load_tokenizer(paths.base_model)
    model = load_model(paths.base_model)
    freeze(model, p.freeze_layers)
    if p.gradient_checkpointing and p.freeze_layers:
        model.enable_input_require_grads()  # frozen embeddings would cut the gradient path
    args = training_args(p, params.seed, device, precision, paths.checkpoints, bool(resume))
    with open_live(paths.train_log) as live:
        callbacks = [LiveLosses(live), CompleteCheckpoints(p.keep_checkpoints)]
        if p.early_stopping_patience:
            callbacks.append(EarlyStoppingCallback(p.early_stopping_patience))
        trainer = Trainer(model=model, args=args, train_dataset=train_set, eval_dataset=val_set,
                          data_collator=collator(tokenizer), callbacks=callbacks)
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        final_eval = trainer.evaluate()  # logged to DVCLive by LiveLosses, like the others
    with atomic_output(paths.finetuned) as tmp:
        trainer.model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    if not p.keep_checkpoints:
        remove(paths.checkpoints)
    runtime = result.metrics["train_runtime"]
    tokens = int(trainer.state.num_input_tokens_seen)
    return {
        "train_loss": last(trainer.state.log_history, "loss"),
        "val_loss": float(final_eval["eval_loss"]),
        "steps": trainer.state.global_step,
        "resumed_from_step": checkpoint_step(resume) if resume else 0,
        "tokens": tokens,
        # of this session: a resumed run counts only the tokens it trained on itself
        "tokens_per_second": round((tokens - tokens_before) / runtime, 2) if runtime else None,
        "train_seconds": round(runtime, 2),
        "trainable_parameters": sum(x.numel() for x in model.parameters() if x.requires_grad),
        "env": environment(device, precision),
    }


def main(argv: list[str] | None = None) -> None:
    stage_main("train", run, argv)


if __name__ == "__main__":
    main()
