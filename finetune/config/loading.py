"""Reading params.yaml and validating only the sections a stage reads.

A stage declares what it reads by the parameters of its `run()` (their names are params.yaml
keys, their types the sections' schemas), and dvc.yaml lists the same keys, so a change to
another section neither reruns the stage nor can break it. Every top-level key must still be
one params.yaml knows: a misspelt section fails in every stage, before any work."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from finetune.config.common import DEFAULTS
from finetune.config.section import Section, describe
from finetune.errors import UserError

# every top-level key of params.yaml (finetune.config.schema.Params has the same; a test checks)
KEYS = ("seed", "mode", "num_proc", "model", "ingest", "clean", "split", "tokenize", "train",
        "preference", "evaluate", "export", "report", "tune")


def read(path: str | Path) -> dict[str, Any]:
    """params.yaml as a mapping; a missing file or bad YAML is a UserError naming the line."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}:{line} invalid YAML: {getattr(e, 'problem', e)}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of sections at the top level")
    return raw


def check_keys(raw: dict[str, Any], source: str) -> None:
    for key in raw:
        if key not in KEYS:
            match = difflib.get_close_matches(str(key), KEYS, n=1)
            hint = f" (did you mean {match[0]}?)" if match else ""
            raise UserError(f"{source}: {key}: unknown key{hint}")


@dataclass(frozen=True)
class Key:
    """One key of a section, for a stage that reads that key alone (tokenize reads
    `ingest.on_error`): `Annotated[str, Key(IngestParams, "on_error")]` on a run() parameter."""

    section: type[BaseModel]
    name: str

    @property
    def dotted(self) -> str:
        return f"{section_name(self.section)}.{self.name}"


def section_name(section: type[BaseModel]) -> str:
    """The params.yaml key of a section's schema: IngestParams -> ingest."""
    return section.__name__.removesuffix("Params").lower()


def _some_keys(section: type[BaseModel], names: list[str]) -> type[BaseModel]:
    """A model of the section with those keys alone; the section's other keys are the business
    of the stages that read them."""
    fields = {name: (section.model_fields[name].annotation, section.model_fields[name]) for name in names}
    return create_model(section.__name__, __config__=ConfigDict(extra="ignore", frozen=True), **fields)


def validate(raw: dict[str, Any], schema: dict[str, Any], source: str = "params.yaml") -> dict[str, Any]:
    """The keys of `schema` ({params.yaml key: its type, or a Key}) validated from `raw`, by
    name; a key params.yaml leaves out takes its schema default."""
    check_keys(raw, source)
    fields: dict[str, Any] = {}
    keys: dict[type[BaseModel], list[str]] = {}  # the keys read of each section read in part
    for kind in schema.values():
        if isinstance(kind, Key):
            keys.setdefault(kind.section, []).append(kind.name)
    for section, names in keys.items():
        part = _some_keys(section, names)
        fields[section_name(section)] = (part, part())  # a section params.yaml leaves out: defaults
    for key, kind in schema.items():
        if isinstance(kind, Key):
            continue
        if key in KEYS:
            fields[key] = (kind, DEFAULTS[key] if key in DEFAULTS else kind())
        else:
            raise ValueError(f"{key!r} is not a params.yaml key")  # a programming error
    model = create_model("StageParams", __base__=Section, **fields)
    try:
        validated = model.model_validate({k: raw[k] for k in fields if k in raw})
    except ValidationError as e:
        raise UserError(describe(e, model, source)) from None
    return {key: getattr(getattr(validated, section_name(kind.section)), kind.name)
            if isinstance(kind, Key) else getattr(validated, key) for key, kind in schema.items()}


def load(path: str | Path, schema: dict[str, Any]) -> dict[str, Any]:
    """Read params.yaml and validate the keys of `schema` only."""
    return validate(read(path), schema, str(path))
