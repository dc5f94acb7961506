"""params.yaml `train:`: the method, the optimisation, checkpoints, device and precision."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from finetune.config.section import Section


class LoraParams(Section):
    """LoRA adapters (`train.method: lora`, and `qlora` on a 4-bit base), through peft."""

    r: int = Field(8, ge=1, le=4096)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    # module names (e.g. [q_proj, v_proj]) or all-linear: every linear layer but the output head
    target_modules: list[str] | Literal["all-linear"] = "all-linear"

    @field_validator("target_modules")
    @classmethod
    def _some_modules(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, list) and not value:
            raise ValueError("train.lora.target_modules: name at least one module, or all-linear")
        return value


class TrainParams(Section):
    method: Literal["full", "freeze", "lora", "qlora"] = "full"
    learning_rate: float = Field(1.0e-4, gt=0, le=1)
    num_epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, ge=-1)  # -1: run num_epochs
    batch_size: int = Field(4, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    warmup_steps: int = Field(0, ge=0)  # >0: this many warmup steps instead of warmup_ratio
    weight_decay: float = Field(0.0, ge=0)
    lr_scheduler: Literal[
        "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
        "reduce_lr_on_plateau",
    ] = "cosine"
    # reduce_lr_on_plateau: multiply the rate by plateau_factor after plateau_patience evaluations
    # (every eval_steps) without a lower validation loss; warmup does not apply to it
    plateau_patience: int = Field(1, ge=0)
    plateau_factor: float = Field(0.5, gt=0, lt=1)
    early_stopping_patience: int = Field(0, ge=0)  # 0: off
    # method freeze: the embeddings and the first N blocks; None: the first half of the blocks
    freeze_layers: int | None = Field(None, ge=0)
    lora: LoraParams = LoraParams()
    gradient_checkpointing: bool = False
    eval_steps: int = Field(10, ge=1)
    logging_steps: int = Field(5, ge=1)
    save_steps: int = Field(20, ge=1)  # a checkpoint to resume from every this many steps
    keep_checkpoints: bool = False  # keep models/checkpoints after a finished run
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    tf32: bool = True  # TF32 matmuls on GPUs that have them (Ampere and newer)
    compile: bool = False  # torch.compile the model
    attention: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    num_processes: int = Field(1, ge=1, le=1024)  # >1: torchrun, one process per GPU (or CPU)
    distributed: Literal["ddp", "fsdp"] = "ddp"  # with num_processes > 1

    @model_validator(mode="after")
    def _consistent(self) -> TrainParams:
        if self.method == "freeze" and self.freeze_layers == 0:
            raise ValueError("train.freeze_layers: train.method freeze needs 1 or more blocks to "
                             "freeze, or null for the first half of them")
        if self.freeze_layers and self.method != "freeze":
            raise ValueError(f"train.freeze_layers: {self.freeze_layers} blocks to freeze, but "
                             f"train.method is {self.method}; set train.method: freeze")
        if self.max_steps > 0 and self.warmup_steps >= self.max_steps:
            raise ValueError(f"train.warmup_steps: {self.warmup_steps} warmup steps are not fewer "
                             f"than the {self.max_steps} training steps (train.max_steps)")
        if self.early_stopping_patience and self.save_steps != self.eval_steps:
            raise ValueError(f"train.save_steps: must equal train.eval_steps ({self.eval_steps}) "
                             "when train.early_stopping_patience is set, so that every evaluated "
                             "model, the best included, is in a checkpoint")
        if self.method in ("lora", "qlora") and self.num_processes > 1 and self.distributed == "fsdp":
            raise ValueError("train.distributed: fsdp with train.method lora is not supported; "
                             "use ddp (LoRA's few trainable weights need no sharding)")
        return self
