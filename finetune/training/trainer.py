"""Fine-tuning with the Hugging Face Trainer: the method (full, freeze, LoRA, QLoRA), the training
arguments, DVCLive logging, checkpoints a killed run resumes from (which run they belong to, and
the torchrun launcher: finetune.training.runs)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

from transformers import ProgressCallback, TrainerCallback

from finetune.config.train import TrainParams
from finetune.errors import UserError
from finetune.files import atomic_output, read_json, remove, write_json
from finetune.models.collators import collator, model_inputs
from finetune.models.loading import (
    compute_dtype,
    load_model,
    load_tokenizer,
    local_model_dir,
    pick_device,
    pick_precision,
    save_tokenizer,
    set_inference,
    with_attention,
)
from finetune.paths import INFERENCE_FILE, Paths
from finetune.training import progress
from finetune.training.runs import COMPLETE, RUN_FILE, checkpoint_step

# transformers 5 deprecates `model.is_gradient_checkpointing`, which the training loop still reads
# (a FutureWarning on every run): nothing a user can act on
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated",
                        category=FutureWarning)
# peft on GPT-2-style Conv1D layers: it sets fan_in_fan_out itself, as it should
warnings.filterwarnings("ignore", message="fan_in_fan_out is set to False", category=UserWarning)


LOGGED = {"loss": "train/loss", "eval_loss": "eval/loss", "learning_rate": "train/learning_rate"}


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
            if "eval_loss" in logs:  # for `uv run tune`'s pruner, when it runs this stage
                progress.report(state.global_step, float(logs["eval_loss"]))


class QuietProgress(ProgressCallback):
    """The Trainer's progress bar with the latest losses on it, instead of a printed dict of every
    logged value (the losses go to DVCLive; the stage prints its summary at the end)."""

    shown: dict[str, str] = {}

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
               **kwargs: Any) -> None:
        latest = {k: f"{v:.4g}" for k, v in (logs or {}).items()
                  if k in ("loss", "eval_loss") and isinstance(v, float)}
        if state.is_world_process_zero and self.training_bar is not None and latest:
            self.shown = {**self.shown, **latest}
            self.training_bar.set_postfix(self.shown, refresh=False)


class CompleteCheckpoints(TrainerCallback):
    """Marks a checkpoint complete after the Trainer saved it, then removes the older ones (but
    not the best one, which early stopping reloads), so one complete checkpoint always exists."""

    def __init__(self, keep_last: bool) -> None:
        self.keep_last = keep_last

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # The Trainer also checkpoints the last step; unless checkpoints are kept (or early
        # stopping may pick that step as the best), that is a model-and-optimizer write that is
        # deleted right after, since models/finetuned follows.
        last = state.global_step >= state.max_steps
        if last and not self.keep_last and not args.load_best_model_at_end:
            control.should_save = False

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # every rank has written its part (its RNG state) before the mark
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


def packed_trainer() -> type:
    """The Trainer, giving packed rows to the model as finetune.models.collators.model_inputs says (the
    attention mask of a packed batch only counts real tokens for tokens/s)."""
    from transformers import Trainer

    class PackedTrainer(Trainer):
        def compute_loss(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            return super().compute_loss(model, model_inputs(inputs), *args, **kwargs)

    return PackedTrainer


def rank() -> int:
    """This process's rank under torchrun (0 when not distributed)."""
    return int(os.environ.get("RANK", "0"))


def open_live(directory: Path) -> Any:
    """A DVCLive logger that writes the loss histories only (no dvc.yaml, no experiment of its
    own: DVC's pipeline and `dvc exp` own those)."""
    from scmrepo.exceptions import SCMError

    from dvclive import Live

    try:
        return Live(dir=str(directory), save_dvc_exp=False, dvcyaml=None)
    except SCMError as e:  # DVCLive reads the baseline commit; a new repository has none
        raise UserError(f"git: {e}; make a first commit (git add -A && git commit) and rerun") from None


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


def default_frozen(model: Any) -> int:
    """`train.freeze_layers: null`: the first half of the blocks (at least one), where the more
    general features sit; the later half adapts to the data (SmolLM2-135M: 15 of 30)."""
    return max(1, model.config.num_hidden_layers // 2)


def load_quantized(path: Path, device: str, precision: str, attention: str) -> Any:
    """The base model with its linear layers in 4-bit NF4 (double quantization), the rest and
    the computation in the training precision (bitsandbytes, through transformers)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = compute_dtype(precision)
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype)
    place = int(os.environ.get("LOCAL_RANK", 0)) if device == "cuda" else "cpu"
    return with_attention(lambda implementation: AutoModelForCausalLM.from_pretrained(
        local_model_dir(path), quantization_config=config, dtype=dtype, device_map={"": place},
        attn_implementation=implementation, use_safetensors=True, trust_remote_code=False), attention)


def prepare(model: Any, p: TrainParams) -> Any:
    """The model to train for `train.method`: every weight (full), all but the embeddings and
    the first blocks (freeze), or LoRA adapters on top of frozen weights (lora, through peft;
    qlora: on a 4-bit base, load_quantized)."""
    if p.method == "freeze":
        freeze(model, default_frozen(model) if p.freeze_layers is None else p.freeze_layers)
    elif p.method in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model

        if p.method == "qlora":
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=p.gradient_checkpointing)
        config = LoraConfig(task_type="CAUSAL_LM", r=p.lora.r, lora_alpha=p.lora.alpha,
                            lora_dropout=p.lora.dropout, target_modules=p.lora.target_modules)
        try:
            model = get_peft_model(model, config)
        except ValueError as e:  # e.g. a target module the model does not have
            raise UserError(f"train.lora.target_modules: {e}") from None
    if p.gradient_checkpointing and p.method != "full":
        model.enable_input_require_grads()  # frozen embeddings would cut the gradient path
    return model


def save_finetuned(trainer: Any, tokenizer: Any, p: TrainParams, directory: Path,
                   asked: dict[str, Any], base: Path | None = None, precision: str = "fp32") -> None:
    """models/finetuned: a plain model (LoRA merged in, its adapter kept under lora_adapter/;
    QLoRA's merged into the `base` weights at full precision, saved in the training precision),
    with the chat template, stop tokens and sampling it is to be asked with (`asked`, from
    tokenize), written by rank 0 only. Every rank takes part in gathering the weights (FSDP
    shards them)."""
    state = trainer.accelerator.get_state_dict(trainer.model) if trainer.is_fsdp_enabled else None
    if rank() != 0:
        return
    model = trainer.accelerator.unwrap_model(trainer.model)
    with atomic_output(directory) as tmp:
        if p.method in ("lora", "qlora"):
            model.save_pretrained(tmp / "lora_adapter")
            if p.method == "qlora":  # not into the 4-bit copy, which would round the merge
                from peft import PeftModel

                full = load_model(base, "cpu").to(compute_dtype(precision))
                model = PeftModel.from_pretrained(full, tmp / "lora_adapter").merge_and_unload()
            else:
                model = model.merge_and_unload()
            state = None
        set_inference(model, tokenizer, asked)
        model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        save_tokenizer(tokenizer, tmp)
        write_json(asked, tmp / INFERENCE_FILE)  # how to ask it, for generate, serve and export


def speed_options(p: TrainParams, device: str) -> dict[str, Any]:
    """TrainingArguments for speed: fused AdamW (CPU and GPU), TF32 on a GPU that has it,
    torch.compile on request, and the distributed engine when there is more than one process."""
    import torch

    cuda = device == "cuda"
    options: dict[str, Any] = {
        "tf32": p.tf32 if cuda and torch.cuda.get_device_capability()[0] >= 8 else None,
        "optim": "adamw_torch_fused",
        "torch_compile": p.compile,
    }
    if p.num_processes > 1:
        options["ddp_backend"] = "nccl" if cuda else "gloo"
        if p.distributed == "fsdp":
            options["fsdp"] = "full_shard auto_wrap"
            options["fsdp_config"] = {"state_dict_type": "FULL_STATE_DICT"}
    return options


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
        # stepped with the validation loss of each evaluation (metric_for_best_model)
        lr_scheduler_kwargs=({"patience": p.plateau_patience, "factor": p.plateau_factor}
                             if p.lr_scheduler == "reduce_lr_on_plateau" else {}),
        # the curve starts at the base model; a resumed run has that point from its checkpoint
        eval_strategy="steps", eval_steps=p.eval_steps, eval_on_start=not resuming,
        logging_steps=p.logging_steps,
        save_strategy="steps", save_steps=p.save_steps, save_total_limit=None,  # see CompleteCheckpoints
        restore_callback_states_from_checkpoint=True, load_best_model_at_end=early,
        metric_for_best_model="eval_loss", greater_is_better=False,
        use_cpu=device == "cpu", bf16=precision == "bf16", fp16=precision == "fp16",
        include_num_input_tokens_seen="non_padding", report_to="none",
        dataloader_num_workers=0, **speed_options(p, device),
    )


def environment(device: str, precision: str) -> dict[str, str]:
    """What a result depends on beyond code, data and params, so that a difference between two
    machines shows up next to the metrics instead of staying a mystery."""
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


def train_model(seed: int, p: TrainParams, paths: Paths, resume: Path | None) -> dict[str, Any]:
    import datasets
    from transformers import EarlyStoppingCallback, set_seed

    device = pick_device(p.device)
    precision = pick_precision(p.precision, device)
    tokens_before = 0
    if resume:
        state = json.loads((resume / "trainer_state.json").read_text())
        tokens_before = int(state.get("num_input_tokens_seen", 0))
        if rank() == 0:
            print(f"train: resuming from {resume} (step {checkpoint_step(resume)})")
    set_seed(seed)
    train_set = datasets.load_from_disk(str(paths.tokenized / "train"))
    val_set = datasets.load_from_disk(str(paths.tokenized / "val"))
    from finetune.training.plan import check  # the memory it needs, before the model is loaded

    lines = check(p, paths.base_model, device, precision, len(train_set[0]["input_ids"]))
    if rank() == 0:
        print("\n".join(line.replace("plan: ", "train: ", 1) for line in lines), flush=True)
    tokenizer = load_tokenizer(paths.base_model)
    if p.method == "qlora":
        base = load_quantized(paths.base_model, device, precision, p.attention)
    else:
        base = load_model(paths.base_model, attention=p.attention)
    model = prepare(base, p)
    args = training_args(p, seed, device, precision, paths.checkpoints, bool(resume))
    with open_live(paths.train_log) if rank() == 0 else contextlib.nullcontext() as live:
        callbacks: list[Any] = [CompleteCheckpoints(p.keep_checkpoints)]
        if live is not None:
            callbacks.append(LiveLosses(live))
        if p.early_stopping_patience:
            callbacks.append(EarlyStoppingCallback(p.early_stopping_patience))
        packed = "position_ids" in train_set.column_names
        trainer = packed_trainer()(model=model, args=args, train_dataset=train_set,
                                   eval_dataset=val_set,
                                   data_collator=collator(tokenizer, packed,
                                                          flatten=p.attention == "flash_attention_2"),
                                   callbacks=callbacks)
        if trainer.pop_callback(ProgressCallback) is not None:  # absent with disable_tqdm
            trainer.add_callback(QuietProgress())
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        final_eval = trainer.evaluate()  # logged to DVCLive by LiveLosses, like the others
    trainable = sum(x.numel() for x in model.parameters() if x.requires_grad)
    save_finetuned(trainer, tokenizer, p, paths.finetuned, read_json(paths.inference_file),
                   paths.base_model, precision)
    if rank() == 0 and not p.keep_checkpoints:
        remove(paths.checkpoints)
    elif rank() == 0:  # kept for inspection or further training, never resumed by this stage
        run = json.loads((paths.checkpoints / RUN_FILE).read_text())
        write_json({**run, "finished": True}, paths.checkpoints / RUN_FILE)
    runtime = result.metrics["train_runtime"]
    tokens = int(trainer.state.num_input_tokens_seen)
    return {
        "method": p.method,
        "train_loss": last(trainer.state.log_history, "loss"),
        "val_loss": float(final_eval["eval_loss"]),
        "steps": trainer.state.global_step,
        "resumed_from_step": checkpoint_step(resume) if resume else 0,
        "tokens": tokens,
        # of this session: a resumed run counts only the tokens it trained on itself
        "tokens_per_second": round((tokens - tokens_before) / runtime, 2) if runtime else None,
        "train_seconds": round(runtime, 2),
        "trainable_parameters": trainable,
        "processes": p.num_processes,
        "env": environment(device, precision),
    }
