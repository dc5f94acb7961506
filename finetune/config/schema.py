"""The whole of params.yaml: every section's schema together, for `uv run tune`, the docs and the
tests (a stage loads only its own sections)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError, model_validator

from finetune.config.clean import CleanParams
from finetune.config.common import DEFAULTS, Mode, NumProc, Seed
from finetune.config.evaluate import EvaluateParams
from finetune.config.export import ExportParams
from finetune.config.ingest import IngestParams
from finetune.config.loading import read
from finetune.config.model import ModelParams
from finetune.config.preference import PreferenceParams
from finetune.config.report import ReportParams
from finetune.config.section import Section, describe
from finetune.config.split import SplitParams
from finetune.config.tokenize import TokenizeParams
from finetune.config.train import TrainParams
from finetune.config.tune import TuneParams
from finetune.errors import UserError


class Params(Section):
    seed: Seed = DEFAULTS["seed"]
    mode: Mode = DEFAULTS["mode"]
    num_proc: NumProc = DEFAULTS["num_proc"]
    model: ModelParams = ModelParams()
    ingest: IngestParams = IngestParams()
    clean: CleanParams = CleanParams()
    split: SplitParams = SplitParams()
    tokenize: TokenizeParams = TokenizeParams()
    train: TrainParams = TrainParams()
    preference: PreferenceParams = PreferenceParams()
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
    """Every section of params.yaml validated (a stage validates only its own: loading.load)."""
    if not isinstance(raw, dict):
        raise UserError(f"{source}: expected a mapping of sections at the top level")
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        raise UserError(describe(e, Params, source)) from None


def load(path: str | Path = "params.yaml") -> Params:
    """Read and validate the whole of params.yaml; a missing file, bad YAML or bad value is a
    UserError."""
    return parse(read(path), str(path))
