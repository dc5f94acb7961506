"""The export stage: GGUF files of the tiny GPT-2 and of a tiny Llama with SmolLM2's tokenizer,
read back by transformers' GGUF loader (a reader nobody here wrote) and compared logit by logit
with the folder they came from; the same bytes on every run; the Ollama Modelfile's template
rendering as the folder's chat template does."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer, GenerationConfig

from finetune.config.schema import Params
from finetune.config.tokenize import TokenizeParams
from finetune.errors import UserError
from finetune.export import bundle, check, llamacpp
from finetune.export.gguf import write_gguf
from finetune.export.ollama import modelfile, read_template
from finetune.models.loading import load_model, load_tokenizer, set_inference
from finetune.paths import Paths
from finetune.report.content import export_blocks
from finetune.text.prompts import SAMPLING, inference
from stages import export
from tests.helpers import run_stage, tiny_params

# the largest absolute logit difference allowed per type, for these tiny models
TOLERANCE = {"f32": 1e-5, "f16": 2e-2, "q8_0": 0.25}
GREEDY_SAME = ("f32", "f16")  # types whose 12 greedy tokens must match exactly


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_back(path: Path) -> Any:
    return check.read_back(path)[0]


def logits(model: Any, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory, smollm2_tokenizer: Any) -> Path:
    """A 2-layer Llama (width 64, grouped-query attention) with SmolLM2's tokenizer and a chat
    template, saved as models/finetuned is, random weights scaled up so logits differ."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(smollm2_tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, rope_theta=100000.0, tie_word_embeddings=True,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(8.0 if p.ndim > 1 else 1.0)
    folder = tmp_path_factory.mktemp("tiny-llama") / "finetuned"
    smollm2_tokenizer.save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)  # a copy: the session's stays as it is
    asked = inference(tokenizer, "chat", TokenizeParams(system_prompt="You are Robin."))
    set_inference(model, tokenizer, dataclasses.asdict(asked))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def trained_in(mode: str, p: TokenizeParams, folder: Path, smollm2: Any) -> Any:
    """The folder's tokenizer with the chat template a model trained in `mode` on SmolLM2 gets."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = inference(smollm2, mode, p).chat_template
    return tokenizer


@pytest.mark.slow  # reads each GGUF back through transformers' loader
# f16 with SmolLM2's real tokenizer here; every type, each within its tolerance, on a tiny Llama
# with a small tokenizer in tests/test_gguf_families.py (reading back 49,152 tokens costs seconds)
@pytest.mark.parametrize("kind", ["f16"])
def test_llama_export_reads_back_as_the_same_model(tiny_llama: Path, tmp_path: Path, kind: str) -> None:
    model, tokenizer = load_model(tiny_llama), load_tokenizer(tiny_llama)
    written = write_gguf(tiny_llama, model, tokenizer, kind, tmp_path / f"m-{kind}.gguf", "tiny")
    back, read_tokenizer = check.read_back(written.path)  # the tokenizer as the file has it
    assert back.config.num_key_value_heads == 2 and back.config.tie_word_embeddings
    ids = tokenizer("The storm came in from the west at 23:14, and", add_special_tokens=False)["input_ids"]
    diff = (logits(model, ids) - logits(back, ids)).abs().max().item()
    assert diff <= TOLERANCE[kind], f"{kind}: max logit difference {diff}"
    if kind in GREEDY_SAME:
        assert check.greedy(model, ids, 12) == check.greedy(back, ids, 12)
    # the tokenizer and its chat template travel inside the file
    probe = "<|im_start|>user\nHi 23:14"
    assert read_tokenizer(probe)["input_ids"] == tokenizer(probe)["input_ids"]
    assert read_tokenizer.chat_template == tokenizer.chat_template


def test_gpt2_export_reads_back_and_is_the_same_bytes_every_time(
        trained: tuple[Params, Paths], tmp_path: Path) -> None:
    folder = trained[1].finetuned
    model, tokenizer = load_model(folder), load_tokenizer(folder)
    first = write_gguf(folder, model, tokenizer, "f16", tmp_path / "a.gguf", "tiny")
    again = write_gguf(folder, load_model(folder), load_tokenizer(folder), "f16", tmp_path / "b.gguf", "tiny")
    assert sha(first.path) == sha(again.path)
    back = read_back(first.path)
    ids = tokenizer("The miller counted sacks", add_special_tokens=False)["input_ids"]
    assert (logits(model, ids) - logits(back, ids)).abs().max().item() <= TOLERANCE["f16"]
    assert check.greedy(model, ids, 8) == check.greedy(back, ids, 8)


def test_another_architecture_ends_in_one_line_naming_it(tmp_path: Path,
                                                         trained: tuple[Params, Paths]) -> None:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    model = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=400, hidden_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=64,
                                             architectures=["GPTNeoXForCausalLM"]))
    with pytest.raises(UserError, match=r"gpt_neox architecture \(GPTNeoXForCausalLM\) cannot be"):
        write_gguf(trained[1].finetuned, model, load_tokenizer(trained[1].finetuned), "f16",
                   tmp_path / "x.gguf", "x")
    assert not (tmp_path / "x.gguf").exists()


def exported_project(trained: tuple[Params, Paths], root: Path) -> Paths:
    """A project with the trained fixture's model and tokenized test split, as export finds them."""
    local = Paths().under(root)
    shutil.copytree(trained[1].finetuned, local.finetuned)
    shutil.copytree(trained[1].tokenized / "test", local.tokenized / "test")
    return local


@pytest.mark.slow  # two real exports, their read-back checks and perplexities
def test_the_stage_writes_gguf_files_modelfile_and_measures_them(trained: tuple[Params, Paths],
                                                                 tmp_path: Path) -> None:
    local = exported_project(trained, tmp_path / "project")
    summary = run_stage(export, tiny_params(export={"gguf_type": "q8_0", "gguf_types": ["f16", "q8_0"],
                                                    "name": "tiny"}), local)
    gguf = local.export / "tiny-q8_0.gguf"
    assert summary["file"] == str(gguf) and summary["bytes"] == gguf.stat().st_size
    check = summary["check"]
    assert check["tokenizer_agrees"] and check["max_abs_logit_diff"] <= TOLERANCE["q8_0"]
    assert summary["ollama_template"] == "derived"
    text = (local.export / "Modelfile").read_text()
    assert "FROM ./tiny-q8_0.gguf\n" in text and 'TEMPLATE """' in text
    assert sorted(p.name for p in local.export.iterdir()) == ["Modelfile", "tiny-f16.gguf", "tiny-q8_0.gguf"]
    # the cost of each quantisation, on the test split's tokens, beside the folder's own figure
    types, folder = summary["types"], summary["finetuned_test"]
    assert list(types) == ["q8_0", "f16"] and types["q8_0"]["check"] == check
    assert types["f16"]["bytes"] > types["q8_0"]["bytes"]
    for kind, figures in types.items():
        assert figures["test"]["tokens"] == folder["tokens"] > 0
        assert figures["test"]["perplexity"] == pytest.approx(folder["perplexity"], rel=0.05), kind
    assert abs(types["f16"]["test"]["loss"] - folder["loss"]) < 1e-3
    # and in the report, file by file
    heading, intro, (kind, table) = export_blocks(summary)
    assert heading == ("h2", "What each exported file costs (test split)") and kind == "table"
    assert [row[0] for row in table[1:]] == ["tiny-q8_0.gguf", "tiny-f16.gguf"]
    shown = [row[2] for row in table[1:]]
    assert shown == [f"{figures['test']['perplexity']:,.3f}" for figures in types.values()]
    if llamacpp.available():  # and as llama.cpp computes it
        assert types["f16"]["llama_cpp_test"]["perplexity"] == pytest.approx(folder["perplexity"], rel=0.01)


def test_a_llama_cpp_type_without_llama_cpp_says_how_to_install_it(
        trained: tuple[Params, Paths], tmp_path: Path) -> None:
    if llamacpp.available():
        pytest.skip("llama-cpp-python is installed here")
    local = exported_project(trained, tmp_path)
    with pytest.raises(UserError, match=r"q4_k_m is made by llama.cpp's quantiser.*uv sync --group llamacpp"):
        run_stage(export, tiny_params(export={"gguf_types": ["q4_k_m"]}), local)
    assert not local.export.exists()


def test_a_lora_adapter_of_a_run_without_one_ends_in_one_line(trained: tuple[Params, Paths],
                                                              tmp_path: Path) -> None:
    local = exported_project(trained, tmp_path)
    with pytest.raises(UserError, match=r"export.lora_adapter: .* has no LoRA adapter"):
        run_stage(export, tiny_params(export={"lora_adapter": True}), local)
    assert not local.export.exists()


@pytest.mark.slow  # three llama.cpp quantisations and their perplexities in llama.cpp
def test_llama_cpp_k_quants_and_what_they_cost(trained: tuple[Params, Paths], tmp_path: Path) -> None:
    if not llamacpp.available():
        pytest.skip("llama-cpp-python is not installed (uv sync --group llamacpp)")
    local = exported_project(trained, tmp_path)
    summary = run_stage(export, tiny_params(export={"gguf_type": "q4_k_m", "gguf_types": ["q5_k_m", "q6_k"]}),
                        local)
    folder = summary["finetuned_test"]["perplexity"]
    for kind in ("q4_k_m", "q5_k_m", "q6_k"):
        figures = summary["types"][kind]
        assert figures["check"]["tokenizer_agrees"]
        # within 10% of the folder's perplexity on this tiny model, in both readers
        assert figures["llama_cpp_test"]["perplexity"] == pytest.approx(folder, rel=0.10), kind
        assert figures["test"]["perplexity"] == pytest.approx(folder, rel=0.10), kind
    assert "FROM ./finetuned-q4_k_m.gguf\n" in (local.export / "Modelfile").read_text()


@pytest.mark.slow  # two real exports
def test_an_export_that_fails_its_check_leaves_the_last_one_as_it_was(
        trained: tuple[Params, Paths], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local = exported_project(trained, tmp_path)
    run_stage(export, tiny_params(export={"name": "tiny"}), local)
    before = {p.name: sha(p) for p in local.export.iterdir()}

    def broken(*args: Any) -> dict[str, Any]:
        return {"tokenizer_agrees": True, "top_token_agreement": 0.1}

    monkeypatch.setattr(bundle, "compare_loaded", broken)
    with pytest.raises(UserError, match="does not read back as the model it was written from"):
        run_stage(export, tiny_params(export={"name": "other"}), local)
    assert {p.name: sha(p) for p in local.export.iterdir()} == before
    assert sorted(p.name for p in local.export.parent.iterdir()) == ["export", "finetuned"]


@pytest.mark.parametrize("mode,p", [("chat", TokenizeParams(system_prompt="You are Robin.")),
                                    ("chat", TokenizeParams()),
                                    ("pairs", TokenizeParams()), ("text", TokenizeParams())])
def test_modelfile_template_renders_as_the_chat_template(tiny_llama: Path, smollm2_tokenizer: Any,
                                                         mode: str, p: TokenizeParams) -> None:
    tokenizer = trained_in(mode, p, tiny_llama, smollm2_tokenizer)
    text, source = modelfile("m.gguf", tokenizer, GenerationConfig(eos_token_id=[2], **SAMPLING), 8192)

    def apply(messages: list[dict[str, str]], gen: bool) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)

    template = read_template(apply)
    conv = [{"role": "user", "content": "Hi, my kettle leaks."},
            {"role": "assistant", "content": "Sorry! Your order number?"},
            {"role": "user", "content": "FH-21290."}]
    assert source == "derived" and template is not None
    assert template.render(conv) == apply(conv, True)
    assert 'PARAMETER stop "<|im_end|>"' in text and "PARAMETER temperature 0.8" in text
    if mode == "chat":
        system = p.system_prompt or "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
        assert f'SYSTEM """{system}"""' in text
        assert "<|im_start|>assistant\n{{ else }}" in text
    else:
        assert template.last_user_only and "SYSTEM" not in text


def test_a_template_that_cannot_be_read_leaves_ollama_the_gguf_one(tiny_llama: Path) -> None:
    tokenizer = load_tokenizer(tiny_llama)
    tokenizer.chat_template = (  # renders a message differently by its position
        "{% for m in messages %}{% if loop.index is even %}[{{ m.role }}] {% endif %}"
        "{{ m.content }}\n{% endfor %}")
    text, source = modelfile("m.gguf", tokenizer, GenerationConfig(eos_token_id=2), 512)
    assert source == "from the GGUF file" and "TEMPLATE" not in text
    assert text.startswith("# ollama create") and "FROM ./m.gguf\n" in text


def test_exported_file_runs_in_llama_cpp(tiny_llama: Path, tmp_path: Path) -> None:
    """Where llama-cpp-python is installed (`uv run --group llamacpp`, it compiles llama.cpp)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    model, tokenizer = load_model(tiny_llama), load_tokenizer(tiny_llama)
    path = write_gguf(tiny_llama, model, tokenizer, "f32", tmp_path / "m.gguf", "tiny").path
    llm = llama_cpp.Llama(model_path=str(path), logits_all=True, verbose=False, n_ctx=128)
    text = "The storm came in from the west at 23:14, and"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids
    llm.eval(ids)
    got = torch.tensor(llm.eval_logits)
    assert (got - logits(model, ids)).abs().max().item() < 0.05


# Ollama renders a Modelfile's TEMPLATE with Go's text/template over these values (its
# template.Values, reduced to the fields the exported templates use).
GO_RENDER = """package main

import (
	"encoding/json"
	"os"
	"text/template"
)

type Message struct{ Role, Content string }
type Values struct {
	Messages                 []Message
	System, Prompt, Response string
}

func main() {
	var in struct {
		Template string
		Values   Values
	}
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		panic(err)
	}
	t := template.Must(template.New("m").Parse(in.Template))
	if err := t.Execute(os.Stdout, in.Values); err != nil {
		panic(err)
	}
}
"""


@pytest.fixture(scope="module")
def go_render(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Render a Go template as Ollama does (Go's text/template), where Go is installed."""
    import json
    import subprocess

    go = shutil.which("go")
    if go is None:
        pytest.skip("no Go toolchain (apt-get install golang-go) to run Ollama's template engine")
    where = tmp_path_factory.mktemp("go")
    (where / "main.go").write_text(GO_RENDER)
    subprocess.run([go, "build", "-o", str(where / "render"), str(where / "main.go")], check=True,
                   cwd=where, env={**os.environ, "GO111MODULE": "off"}, timeout=300)

    def render(template: str, **values: Any) -> str:
        done = subprocess.run([str(where / "render")], input=json.dumps(
            {"Template": template, "Values": values}), capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    return render


@pytest.mark.parametrize("mode,p", [("chat", TokenizeParams(system_prompt="You are Robin.")),
                                    ("chat", TokenizeParams()),
                                    ("pairs", TokenizeParams()), ("text", TokenizeParams())])
def test_ollama_renders_the_modelfile_template_as_training_rendered(
        tiny_llama: Path, smollm2_tokenizer: Any, go_render: Any, mode: str,
        p: TokenizeParams) -> None:
    import re

    tokenizer = trained_in(mode, p, tiny_llama, smollm2_tokenizer)
    text, _ = modelfile("m.gguf", tokenizer, GenerationConfig(eos_token_id=[2]), 8192)
    template = re.search(r'^TEMPLATE """(.*?)"""$', text, re.S | re.M).group(1)
    system = re.search(r'^SYSTEM """(.*?)"""$', text, re.S | re.M)
    conv = [{"role": "user", "content": "Hi, my kettle leaks."},
            {"role": "assistant", "content": "Sorry! Your order number?"},
            {"role": "user", "content": "FH-21290, {{ braces }} and all."}]
    # Ollama's chat API puts the Modelfile's SYSTEM first where a request has no system message
    messages = ([{"role": "system", "content": system.group(1)}] if system else []) + conv
    go_messages = [{"Role": m["role"], "Content": m["content"]} for m in messages]
    want = tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    assert go_render(template, Messages=go_messages) == want
    # the generate API (a prompt, no messages)
    alone = tokenizer.apply_chat_template(conv[-1:], tokenize=False, add_generation_prompt=True)
    assert go_render(template, Prompt=conv[-1]["content"],
                     System=system.group(1) if system else "") == alone
