"""Fine-tune models/base on data/tokenized/train with the Hugging Face Trainer, evaluating on
data/tokenized/val; write models/finetuned/ (safetensors + tokenizer), the loss curves
(DVCLive, under dvclive/train) and metrics/train.json. Params: `seed`, `train`."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from stages.io import (
    atomic_output,
    load_model,
    load_tokenizer,
    pick_device,
    pick_precision,
    stage_main,
)
from stages.params import PATHS, Params, Paths, TrainParams, UserError

LOGGED = {"loss": "train/loss", "eval_loss": "eval/loss", "learning_rate": "train/learning_rate"}


class LiveLosses(TrainerCallback):
    """Sends the train and eval losses (and nothing else) to DVCLive at each logging step."""

    def __init__(self, live: Any) -> None:
        self.live = live

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None,
               **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        self.live.step = state.global_step
        for key, name in LOGGED.items():
            if key in logs:
                self.live.log_metric(name, float(logs[key]))


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


def training_args(p: TrainParams, seed: int, device: str, precision: str, out: Path) -> Any:
    from transformers import TrainingArguments

    early = p.early_stopping_patience > 0
    return TrainingArguments(
        output_dir=str(out), seed=seed, data_seed=seed,
        learning_rate=p.learning_rate, num_train_epochs=p.num_epochs, max_steps=p.max_steps,
        per_device_train_batch_size=p.batch_size, per_device_eval_batch_size=p.batch_size,
        gradient_accumulation_steps=p.gradient_accumulation_steps,
        warmup_steps=float(p.warmup_ratio), weight_decay=p.weight_decay,
        lr_scheduler_type=p.lr_scheduler, activation_checkpointing=p.gradient_checkpointing,
        eval_strategy="steps", eval_steps=p.eval_steps, eval_on_start=True,  # curve starts at base
        logging_steps=p.logging_steps,
        save_strategy="steps" if early else "no", save_steps=p.eval_steps,
        save_total_limit=1 if early else None, load_best_model_at_end=early,
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
    set_seed(params.seed)
    tokenizer = load_tokenizer(paths.base_model)
    model = load_model(paths.base_model)
    freeze(model, p.freeze_layers)
    if p.gradient_checkpointing and p.freeze_layers:
        model.enable_input_require_grads()  # frozen embeddings would cut the gradient path
    train_set = datasets.load_from_disk(str(paths.tokenized / "train"))
    val_set = datasets.load_from_disk(str(paths.tokenized / "val"))
    with tempfile.TemporaryDirectory(prefix="checkpoints-") as out, open_live(paths.train_log) as live:
        callbacks = [LiveLosses(live)]
        if p.early_stopping_patience:
            callbacks.append(EarlyStoppingCallback(p.early_stopping_patience))
        trainer = Trainer(model=model, args=training_args(p, params.seed, device, precision,
                                                          Path(out)),
                          train_dataset=train_set, eval_dataset=val_set,
                          data_collator=collator(tokenizer), callbacks=callbacks)
        result = trainer.train()
        final_eval = trainer.evaluate()
        live.step = trainer.state.global_step
        live.log_metric("eval/loss", float(final_eval["eval_loss"]))
    with atomic_output(paths.finetuned) as tmp:
        trainer.model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    runtime = result.metrics["train_runtime"]
    tokens = int(trainer.state.num_input_tokens_seen)
    return {
        "train_loss": last(trainer.state.log_history, "loss"),
        "val_loss": float(final_eval["eval_loss"]),
        "steps": trainer.state.global_step,
        "tokens": tokens, "tokens_per_second": round(tokens / runtime, 2) if runtime else None,
        "train_seconds": round(runtime, 2),
        "trainable_parameters": sum(x.numel() for x in model.parameters() if x.requires_grad),
        "env": environment(device, precision),
    }


def main(argv: list[str] | None = None) -> None:
    stage_main("train", run, argv)


if __name__ == "__main__":
    main()
