"""How much memory a training run needs, before it starts: weights, gradients, optimizer states,
activations (with the logits) and the process itself, for a model config, a method (full,
freeze, lora, qlora), batch, block size, gradient checkpointing and processes, with a verdict for the
device (CUDA memory, or RAM).

Parameters are counted exactly: the model is built on PyTorch's meta device (no memory) and
prepared as train prepares it (finetune.training.trainer.prepare: frozen blocks, peft adapters).
Activations follow the tensors a decoder block keeps for its backward pass (per token: the
block's inputs and norms, q/k/v and the attention output, the MLP's gate, up and product),
scaled by ACTIVATION_FACTOR, which was fitted to peak memory measured on this CPU (see
docs/training.md#memory)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from finetune.config.train import TrainParams

GIB = 1024**3
# fitted: measured peak resident memory of the train stage against these estimates (see the
# module docstring); kernels keep some temporaries beyond the tensors counted
ACTIVATION_FACTOR = 1.3
PROCESS_BYTES = {"cpu": 0.55 * GIB, "cuda": 0.6 * GIB}  # python, torch, libraries (CUDA: context)


@dataclass
class Plan:
    method: str
    device: str
    precision: str
    parameters: int
    trainable: int
    tokens_per_step: int
    weights: float
    gradients: float
    optimizer: float
    activations: float
    process: float
    merge: float = 0.0  # qlora: the full-precision base the adapter is merged into, at the end

    @property
    def total(self) -> float:
        return (self.weights + self.gradients + self.optimizer + self.activations + self.process
                + self.merge)

    def lines(self, available: float | None = None) -> list[str]:
        """The plan as it is printed (sizes in GiB), with a verdict when `available` is known."""
        gib = lambda x: f"{x / GIB:.2f} GiB"  # noqa: E731
        out = [f"plan: {self.method} on {self.device} ({self.precision}): {self.parameters / 1e6:,.1f}M "
               f"parameters, {self.trainable / 1e6:,.2f}M trained; {self.tokens_per_step:,} tokens per "
               "step per process",
               f"plan: weights {gib(self.weights)} + gradients {gib(self.gradients)} + optimizer "
               f"{gib(self.optimizer)} + activations {gib(self.activations)} + process "
               f"{gib(self.process)}" + (f" + the merge's full-precision base {gib(self.merge)}"
                                         if self.merge else "") + f" = {gib(self.total)} per process"]
        if available is not None:
            verdict = "fits" if self.fits(available) else "does NOT fit"
            out.append(f"plan: {verdict} in the {gib(available)} {memory_name(self.device)} here")
        return out

    def fits(self, available: float) -> bool:
        return self.total <= available


def memory_name(device: str) -> str:
    return "GPU memory" if device == "cuda" else "RAM"


def meta_model(config: Any) -> Any:
    """The model of `config` on the meta device: its modules and parameter shapes, no memory."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def lora_bytes(model: Any, dropout: float, width: int) -> float:
    """Per token, what LoRA adapters add to the backward pass: each adapted linear keeps its
    dropped-out input and dropout mask (a byte a value) when dropout is on, and the output of its
    A matrix."""
    total = 0.0
    for module in model.modules():
        if hasattr(module, "lora_A") and hasattr(module, "in_features") and module.lora_A:
            rank = sum(int(a.out_features) for a in module.lora_A.values())
            total += rank * width + (module.in_features * (width + 1) if dropout > 0 else 0)
    return total


def activation_bytes(config: Any, tokens: int, layers: int, width: int, checkpointing: bool,
                     extra: float = 0.0) -> float:
    """What the backward pass keeps for `layers` trained blocks over `tokens` tokens, plus the
    logits (and their float copies in the loss), at `width` bytes a value; `extra` bytes a token
    beside (LoRA's)."""
    hidden = int(config.hidden_size)
    heads = int(getattr(config, "num_attention_heads", 1))
    kv = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    inner = int(getattr(config, "intermediate_size", None) or 4 * hidden)
    vocab = int(config.vocab_size)
    per_token = (6 * hidden + heads * head_dim * 2 + 2 * kv * head_dim + 4 * inner)  # one block
    blocks = (layers * hidden + per_token) if checkpointing else layers * per_token
    logits = 3 * vocab * 4  # the logits, their float copy and the loss's gradient, in fp32
    return ACTIVATION_FACTOR * tokens * (blocks * width + logits + extra)


def plan(config: Any, train: TrainParams, block_size: int, device: str, precision: str) -> Plan:
    """The memory one process of this run needs."""
    from finetune.training.trainer import default_frozen, prepare

    model = meta_model(config)
    quantized = 0  # qlora: the weights of the linear layers bitsandbytes stores in 4 bits
    if train.method == "qlora":
        import torch
        from transformers.pytorch_utils import Conv1D  # GPT-2's linear layers, quantized too

        head = model.get_output_embeddings()
        quantized = sum(m.weight.numel() for m in model.modules()
                        if isinstance(m, torch.nn.Linear | Conv1D) and m is not head)
    model = prepare(model, train.model_copy(update={"method": "lora"}) if quantized else train)
    parameters = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    layers = int(config.num_hidden_layers)
    if train.method == "freeze":
        frozen = default_frozen(model) if train.freeze_layers is None else train.freeze_layers
        trained_layers = layers - frozen
    else:
        trained_layers = layers
    tokens = train.batch_size * block_size
    width = 2 if precision in ("bf16", "fp16") else 4  # autocast keeps activations in 16 bits
    return Plan(method=train.method, device=device, precision=precision, parameters=parameters,
                trainable=trainable, tokens_per_step=tokens,
                # fp32 master weights (mixed precision autocasts); qlora: NF4 with double
                # quantization (about 4.13 bits a weight), the rest in fp32 (peft's
                # prepare_model_for_kbit_training casts them, and keeps the adapters in fp32)
                weights=(quantized * 4.13 / 8 + (parameters - quantized) * 4.0) if quantized
                else 4.0 * parameters,
                gradients=4.0 * trainable, optimizer=8.0 * trainable,  # AdamW: two fp32 moments
                activations=activation_bytes(
                    config, tokens, trained_layers, width, train.gradient_checkpointing,
                    lora_bytes(model, train.lora.dropout, width) if "lora" in train.method else 0.0),
                process=PROCESS_BYTES["cuda" if device == "cuda" else "cpu"],
                # merged on the CPU: RAM, so it counts where the training memory is RAM
                merge=4.0 * (parameters - trainable) if quantized and device != "cuda" else 0.0)


def available_memory(device: str) -> float:
    """Free GPU memory on CUDA, else the RAM that is available."""
    if device == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info()
        return float(free)
    import psutil

    return float(psutil.virtual_memory().available)


IGNORE_ENV = "FINETUNE_IGNORE_PLAN"  # =1: train even when the plan says it does not fit


def check(p: TrainParams, model_dir: Any, device: str, precision: str, block_size: int) -> list[str]:
    """The train stage's plan lines; a UserError when it cannot fit here (unless IGNORE_ENV)."""
    import os

    import torch
    from transformers import AutoConfig

    from finetune.errors import UserError

    with torch.random.fork_rng(devices=[]):  # building the plan's model draws no training seed
        here = plan(AutoConfig.from_pretrained(model_dir), p, block_size, device, precision)
    available = available_memory(device)
    if not here.fits(available) and os.environ.get(IGNORE_ENV) != "1":
        raise UserError(
            f"the run needs about {here.total / GIB:.1f} GiB per process and {available / GIB:.1f} GiB "
            f"of {memory_name(device)} is free (uv run plan shows the parts): lower train.batch_size "
            "or tokenize.block_size, or set train.gradient_checkpointing: true or train.method: "
            f"lora; {IGNORE_ENV}=1 trains anyway")
    return here.lines(available)
