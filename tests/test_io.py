"""Shared io: outputs appear whole or not at all; device and precision are chosen sensibly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from finetune.errors import UserError
from finetune.files import atomic_output
from finetune.models.loading import load_model, pick_device, pick_precision


def test_atomic_output_leaves_nothing_when_the_writer_fails(tmp_path: Path) -> None:
    final = tmp_path / "out" / "model"
    with pytest.raises(RuntimeError):
        with atomic_output(final) as tmp:
            tmp.mkdir()
            (tmp / "half.bin").write_bytes(b"12")
            raise RuntimeError("killed mid-write")
    assert not final.exists()
    assert list(final.parent.iterdir()) == []


def test_atomic_output_replaces_a_directory_whole(tmp_path: Path) -> None:
    final = tmp_path / "model"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with atomic_output(final) as tmp:
        tmp.mkdir()
        (tmp / "new.txt").write_text("new")
        assert (final / "old.txt").exists(), "the old output stays until the new one is complete"
    assert [p.name for p in final.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_device_and_precision_choice() -> None:
    assert pick_device("cpu") == "cpu"
    assert pick_precision("fp32", "cpu") == "fp32"
    if torch.cuda.is_available():
        assert pick_device("auto") == "cuda"
        assert pick_precision("auto", "cuda") in {"bf16", "fp32"}
    else:
        assert pick_device("auto") == "cpu"
        assert pick_precision("auto", "cpu") == "fp32"
        with pytest.raises(UserError, match="train.device: cuda was asked for"):
            pick_device("cuda")
    with pytest.raises(UserError, match="train.precision: fp16 needs a CUDA device"):
        pick_precision("fp16", "cpu")


def test_a_missing_model_directory_is_a_user_error_not_a_hub_lookup(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no model there"):
        load_model(tmp_path / "models" / "finetuned")
