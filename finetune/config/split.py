"""params.yaml `split:`: the train/val/test fractions."""

from __future__ import annotations

import math

from pydantic import Field, model_validator

from finetune.config.section import Section


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
