"""params.yaml `tune:`: `uv run tune`'s Optuna study. No stage reads it."""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from finetune.config.section import Section

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
    pruner_startup_trials: int = Field(2, ge=0)  # complete (not pruned) trials before any is pruned
    pruner_warmup_steps: int = Field(0, ge=0)  # steps of a trial before it can be pruned
    # each trial also runs evaluate, export and report (scored on the test split, never ranked by
    # it); false: a trial runs through train, all its objective needs
    score_test: bool = False
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
    from finetune.config.schema import Params  # the whole of params.yaml, which imports this module

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
