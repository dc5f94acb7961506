"""The whole of params.yaml: every section's schema together, for `uv run tune`, the docs and the
tests (a stage loads only its own sections)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from finetune.config.clean import CleanParams
from finetune.config.evaluate import EvaluateParams
from finetune.config.export import ExportParams
from finetune.config.ingest import IngestParams
from finetune.config.model import ModelParams
from finetune.config.report import ReportParams
from finetune.config.section import Section, describe
from finetune.config.split import SplitParams
from finetune.config.tokenize import TokenizeParams
from finetune.config.train import TrainParams
from finetune.config.tune import TuneParams
from finetune.errors import UserError


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


def parse(raw: Any, source: str = "params.yaml") -> Params:
    if not isinstance(raw, dict):
        raise UserError(f"{source}: expected a mapping of sections at the top level")
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        raise UserError(describe(e, Params, source)) from None


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
