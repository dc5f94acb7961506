"""Preference tuning with TRL's DPOTrainer on pairs encoded as chat mode encodes conversations
(finetune.text.prompts.encode_pair): the model starts from the supervised one (or the base) and
is measured against the supervised model, the reference; full weights or LoRA adapters (merged).
The device, precision and attention are train's; the losses and rewards go to DVCLive."""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

from finetune.config.preference import PreferenceParams
from finetune.config.train import TrainParams
from finetune.files import atomic_output, read_json, write_json
from finetune.models.loading import (
    load_model,
    load_tokenizer,
    pick_device,
    pick_precision,
    save_tokenizer,
    set_inference,
)
from finetune.paths import INFERENCE_FILE, Paths
from finetune.text.prompts import RenderError, encode_pair, read_inference

# TRL still uses transformers' old names for activation checkpointing (DPOConfig's argument, the
# model's enable/disable): a notice on every run that no user can act on
warnings.filterwarnings("ignore", message="`gradient_checkpointing\\w*` is deprecated",
                        category=FutureWarning)

# what DVCLive gets of TRL's logs: {TRL's name: DVCLive's}
LOGGED = {"loss": "train/loss", "eval_loss": "eval/loss", "learning_rate": "train/learning_rate",
          "rewards/margins": "train/reward_margin", "rewards/accuracies": "train/reward_accuracy",
          "eval_rewards/margins": "eval/reward_margin", "eval_rewards/accuracies": "eval/reward_accuracy"}
NOT_TRAINED = "not_trained.json"  # models/preferred holds only this when there was nothing to learn


def live_preferences(live: Any) -> Any:
    """A callback that sends the DPO loss and the reward margin and accuracy (train and
    validation) to DVCLive."""
    from transformers import TrainerCallback

    class LivePreferences(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None,
                   **kwargs: Any) -> None:
            if state.is_world_process_zero and logs:
                live.step = state.global_step
                for key, name in LOGGED.items():
                    if key in logs:
                        live.log_metric(name, float(logs[key]))

    return LivePreferences()


def encoded_pairs(path: Path, renderer: Any, block_size: int) -> tuple[list[dict[str, list[int]]], int]:
    """The pairs of one split (data/preferences/<split>.jsonl) as TRL's token columns, and how
    many were left out (over block_size tokens, or a template that cannot render them)."""
    rows, left_out = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            encoded = encode_pair(json.loads(line), renderer, block_size)
        except RenderError:
            encoded = None
        if encoded is None:
            left_out += 1
            continue
        rows.append({"prompt_ids": encoded.prompt_ids, "chosen_ids": encoded.chosen_ids,
                     "rejected_ids": encoded.rejected_ids})
    return rows, left_out


def pretokenized_trainer() -> type:
    """TRL's DPOTrainer, fed pairs already encoded (prompt_ids, chosen_ids, rejected_ids): its own
    tokenization, which renders prompts its way, is skipped."""
    from trl import DPOTrainer

    class PretokenizedDPOTrainer(DPOTrainer):
        def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
            if {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(dataset.column_names):
                return dataset
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    return PretokenizedDPOTrainer


def dpo_args(p: PreferenceParams, seed: int, device: str, precision: str, out: Path, evaluate: bool) -> Any:
    from trl import DPOConfig

    return DPOConfig(
        output_dir=str(out), seed=seed, data_seed=seed, beta=p.beta, loss_type=[p.loss_type],
        learning_rate=p.learning_rate, num_train_epochs=p.num_epochs, max_steps=p.max_steps,
        per_device_train_batch_size=p.batch_size, per_device_eval_batch_size=p.batch_size,
        gradient_accumulation_steps=p.gradient_accumulation_steps, warmup_steps=float(p.warmup_ratio),
        eval_strategy="steps" if evaluate else "no", eval_steps=p.eval_steps, logging_steps=p.logging_steps,
        save_strategy="no", report_to="none", use_cpu=device == "cpu", bf16=precision == "bf16",
        fp16=precision == "fp16", max_length=None, precompute_ref_log_probs=p.precompute_reference,
        dataloader_num_workers=0, disable_tqdm=False)


def not_trained(paths: Paths, why: str) -> dict[str, Any]:
    with atomic_output(paths.preferred) as tmp:
        write_json({"trained": False, "why": why}, tmp / NOT_TRAINED)
    paths.preference_log.mkdir(parents=True, exist_ok=True)  # no curves: nothing was trained
    return {"trained": False, "why": why}


def tune(seed: int, p: PreferenceParams, train: TrainParams, block_size: int, paths: Paths) -> dict[str, Any]:
    """models/preferred: the model after preference tuning on data/preferences/train (validated
    on val), asked as the supervised model is (its inference.json); with no training pairs, a
    folder that says so, and the chain ends with the supervised model."""
    nothing = "no preference pairs to train on (preference.paths, preference.ratings)"
    if not paths.pairs_file("train").read_text(encoding="utf-8").strip():
        return not_trained(paths, nothing)
    import datasets
    from transformers import set_seed

    from finetune.training.trainer import last, open_live, prepare

    asked = read_inference(paths.finetuned)
    tokenizer = load_tokenizer(paths.finetuned)
    train_rows, left_out = encoded_pairs(paths.pairs_file("train"), asked.renderer(tokenizer), block_size)
    if not train_rows:
        return not_trained(paths, f"none of the {left_out} training pairs fits tokenize.block_size")
    val_rows, _ = encoded_pairs(paths.pairs_file("val"), asked.renderer(tokenizer), block_size)
    device = pick_device(train.device)
    precision = pick_precision(train.precision, device)
    set_seed(seed)
    start = paths.finetuned if p.start_from == "finetuned" else paths.base_model
    model = load_model(start, attention=train.attention)
    lora = train.model_copy(update={"method": "lora"}) if p.method == "lora" else None
    if lora is not None:
        model = prepare(model, lora)
    # the reference: the supervised model; with precomputed log-probs, or LoRA starting from it
    # (the model without its adapters), no second copy is kept
    own = p.start_from == "finetuned" and (p.precompute_reference or lora is not None)
    reference = None if own else load_model(paths.finetuned, device, attention=train.attention)
    with tempfile.TemporaryDirectory() as out, open_live(paths.preference_log) as live:
        args = dpo_args(p, seed, device, precision, Path(out), bool(val_rows))
        trainer = pretokenized_trainer()(
            model=model, ref_model=reference, args=args, train_dataset=datasets.Dataset.from_list(train_rows),
            eval_dataset=datasets.Dataset.from_list(val_rows) if val_rows else None,
            processing_class=tokenizer, callbacks=[live_preferences(live)])
        result = trainer.train()
        final = trainer.evaluate() if val_rows else {}
    tuned = trainer.accelerator.unwrap_model(trainer.model)
    if lora is not None:
        tuned = tuned.merge_and_unload()
    with atomic_output(paths.preferred) as tmp:
        set_inference(tuned, tokenizer, read_json(paths.finetuned / INFERENCE_FILE))
        tuned.save_pretrained(tmp, safe_serialization=True)
        save_tokenizer(tokenizer, tmp)
        write_json(read_json(paths.finetuned / INFERENCE_FILE), tmp / INFERENCE_FILE)
    runtime, steps = result.metrics["train_runtime"], trainer.state.global_step
    return {"trained": True, "start_from": p.start_from, "method": p.method, "loss_type": p.loss_type,
            "pairs": len(train_rows), "val_pairs": len(val_rows), "left_out": left_out,
            "train_loss": last(trainer.state.log_history, "loss"), "steps": steps,
            "val_loss": final.get("eval_loss"), "val_reward_accuracy": final.get("eval_rewards/accuracies"),
            "val_reward_margin": final.get("eval_rewards/margins"),
            "train_seconds": round(runtime, 2),
            "pairs_per_second": round(steps * p.batch_size * p.gradient_accumulation_steps / runtime, 2)
            if runtime else None}
