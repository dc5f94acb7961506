"""GGUF export of each supported family (finetune.export.gguf.FAMILIES): a tiny model of that
exact architecture from its config with random weights, and a tokenizer of the family's kind
trained here (byte-level BPE with the family's own split regex; SentencePiece for Mistral, Phi-3
and Gemma), exported to f16 and read back through transformers' GGUF loader: the same tokens for
a multilingual and code-heavy string, logits within F16_TOLERANCE, the same greedy continuation,
and the family's tokenizer metadata in the file. Where llama-cpp-python is installed, the same
file run in llama.cpp gives the same greedy tokens."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from finetune.config.export import LIBRARY_TYPES
from finetune.errors import UserError
from finetune.export import check, llamacpp
from finetune.export.gguf import FAMILIES, FILE_TYPES, LLAMA3_SPLIT, QWEN2_SPLIT, write_gguf
from finetune.gguf_files import gguf_module

F16_TOLERANCE = 2e-2  # largest absolute logit difference, f16 weights of these tiny models
LLAMA_CPP_TOLERANCE = 3e-2  # the same f16 file run in llama.cpp (its own kernels) against the folder
GREEDY = 12
TEXT = ["The storm came in from the west, and the river rose 3.5 feet by 23:14.",
        "def add(a, b):\n    return a + b  # 日本語のテキスト, Ünïcödé, привет мир",
        "Q: Where is my order FH-21290?\nA: It ships on Monday, 4 March 2024.",
        "<|im_start|>user\nHi<|im_end|>\n<start_of_turn>model\nOk<end_of_turn>"] * 40
PROBE = "Grüße aus Köln! 東京 def f(x): return x**2 + 1_000 # ok\n\tend 23:14"
CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

# family -> (model_type, config extras, tokenizer kind, special tokens, the gguf pre-tokenizer)
SPECS: dict[str, tuple[str, dict[str, Any], str, list[str], str | None]] = {
    "LlamaForCausalLM": ("llama", {"tie_word_embeddings": False}, LLAMA3_SPLIT,
                         ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"], "llama-bpe"),
    "MistralForCausalLM": ("mistral", {"sliding_window": None}, "spm", ["[INST]", "[/INST]"], None),
    "Qwen2ForCausalLM": ("qwen2", {"tie_word_embeddings": True}, QWEN2_SPLIT,
                         ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "qwen2"),
    # transformers' GGUF reader takes Qwen3's head_dim to be 128, as every Qwen3 has it
    "Qwen3ForCausalLM": ("qwen3", {"head_dim": 128, "tie_word_embeddings": True}, QWEN2_SPLIT,
                         ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "qwen2"),
    # Gemma scales attention by query_pre_attn_scalar: head_dim (256) in the released 2B-12B
    # models, which llama.cpp assumes and transformers' GGUF reader takes as given
    "Gemma2ForCausalLM": ("gemma2", {"head_dim": 256, "query_pre_attn_scalar": 256}, "spm",
                          ["<start_of_turn>", "<end_of_turn>"], None),
    "Gemma3ForCausalLM": ("gemma3_text", {"head_dim": 256, "query_pre_attn_scalar": 256}, "spm",
                          ["<start_of_turn>", "<end_of_turn>"], None),
    "Phi3ForCausalLM": ("phi3", {"pad_token_id": 0}, "spm",
                        ["<|user|>", "<|assistant|>", "<|end|>", "<|endoftext|>"], None),
    "GPT2LMHeadModel": ("gpt2", {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 256}, "gpt2",
                        ["<|endoftext|>"], "gpt-2"),
}


def bpe_tokenizer(split: str, specials: list[str]) -> Any:
    """Byte-level BPE trained on TEXT, split first by the family's regex (GPT-2: its own)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = (pre_tokenizers.ByteLevel(add_prefix_space=False) if split == "gpt2" else
                         pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                                  pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                           use_regex=False)]))
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(TEXT, trainers.BpeTrainer(
        vocab_size=600, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    llama3 = specials[0] == "<|begin_of_text|>"
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=specials[0] if llama3 else None,
                                   eos_token=specials[2] if llama3 else specials[-1], pad_token=specials[0])


def spm_tokenizer(folder: Path, specials: list[str], gemma: bool) -> Any:
    """A SentencePiece BPE model (byte fallback, digits apart) trained on TEXT, as tokenizer.model,
    loaded as the family loads it (GemmaTokenizer or LlamaTokenizer)."""
    import sentencepiece

    ids = (dict(pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>",
                bos_piece="<bos>", unk_piece="<unk>") if gemma
           else dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1))
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXT), model_prefix=str(folder / "tokenizer"), vocab_size=400,
        model_type="bpe", byte_fallback=True, user_defined_symbols=specials, character_coverage=1.0,
        split_digits=True, minloglevel=2, **ids)
    (folder / "tokenizer.vocab").unlink()
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "GemmaTokenizer" if gemma else "LlamaTokenizer"}))
    return AutoTokenizer.from_pretrained(folder)


def tiny_family(arch: str, where: Path) -> tuple[Path, Path]:
    """(models/finetuned, models/base) as the pipeline leaves them for a tiny `arch` model: the
    fine-tuned folder without tokenizer.model (transformers does not save it), the base with it."""
    model_type, extra, kind, specials, _ = SPECS[arch]
    folder, base = where / "finetuned", where / "base"
    folder.mkdir(parents=True)
    base.mkdir()
    if kind == "spm":
        tokenizer = spm_tokenizer(folder, specials, gemma=arch.startswith("Gemma"))
        shutil.move(folder / "tokenizer.model", base / "tokenizer.model")
        (folder / "tokenizer_config.json").unlink()
    else:
        tokenizer = bpe_tokenizer(kind, specials)
        tokenizer.chat_template = CHATML if "<|im_start|>" in specials else None
    size = {} if model_type == "gpt2" else {
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 256}
    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), architectures=[arch],
                                  eos_token_id=tokenizer.eos_token_id, **size, **extra)
    # as the families' configs have it (Qwen and GPT-2: BOS is the EOS token)
    bos = tokenizer.bos_token_id
    config.bos_token_id = bos if bos is not None else tokenizer.eos_token_id
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # weights scaled up so that the logits differ from token to token
        for p in model.parameters():
            p.mul_(8.0 if p.ndim > 1 else 1.0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    assert not (folder / "tokenizer.model").exists()
    return folder, base


def logits(model: Any, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0]


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    arch = request.param
    folder, base = tiny_family(arch, tmp_path_factory.mktemp(arch))
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    written = write_gguf(folder, model, tokenizer, "f16", folder.parent / "m-f16.gguf", "tiny", base=base)
    return arch, folder, model, tokenizer, written.path


def test_each_family_reads_back_as_the_same_model(exported: Any) -> None:
    arch, _, model, tokenizer, path = exported
    back, read_tokenizer = check.read_back(path)
    ids = tokenizer(PROBE, add_special_tokens=False)["input_ids"]
    assert read_tokenizer(PROBE, add_special_tokens=False)["input_ids"] == ids
    assert tokenizer.unk_token_id not in ids or arch == "GPT2LMHeadModel"
    diff = (logits(model, ids) - logits(back, ids)).abs().max().item()
    assert diff <= F16_TOLERANCE, f"{arch}: max logit difference {diff}"
    assert check.greedy(model, ids, GREEDY) == check.greedy(back, ids, GREEDY)


def test_each_family_carries_its_tokenizer_metadata(exported: Any) -> None:
    arch, _, _, tokenizer, path = exported
    fields = gguf_module().GGUFReader(path).fields

    def value(key: str) -> Any:
        return fields[key].contents() if key in fields else None

    pre = SPECS[arch][4]
    assert value("tokenizer.ggml.model") == ("gpt2" if pre else "llama")
    if pre:
        assert value("tokenizer.ggml.pre") == pre
    assert value("tokenizer.ggml.eos_token_id") == tokenizer.eos_token_id
    assert value("tokenizer.ggml.add_bos_token") is bool(
        tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id] and tokenizer.bos_token_id is not None)
    if tokenizer.chat_template:
        assert value("tokenizer.chat_template") == tokenizer.chat_template


def test_each_family_runs_in_llama_cpp_with_the_same_greedy_tokens(exported: Any) -> None:
    if not llamacpp.available():
        pytest.skip("llama-cpp-python is not installed (uv sync --group llamacpp)")
    arch, _, model, tokenizer, path = exported
    ids = tokenizer(PROBE, add_special_tokens=False)["input_ids"]
    llm = llamacpp.load(path, n_ctx=128, threads=1)
    try:
        assert llm.tokenize(PROBE.encode(), add_bos=False, special=True) == ids
        got = torch.from_numpy(llamacpp.logits(llm, ids)).float()
        diff = (got - logits(model, ids)).abs().max().item()
        assert diff <= LLAMA_CPP_TOLERANCE, f"{arch} in llama.cpp: max logit difference {diff}"
        assert llamacpp.greedy(llm, ids, GREEDY) == check.greedy(model, ids, GREEDY)
    finally:
        llm.close()


# the largest absolute logit difference per type, for the tiny Llama (q5_0 and q4_0 keep the
# embedding and output head in q8_0), and the types whose greedy tokens must be the same
TYPE_TOLERANCE = {"f32": 1e-5, "f16": F16_TOLERANCE, "bf16": 0.15, "q8_0": 0.4, "q5_0": 2.5, "q4_0": 4.0}


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, Any]:
    folder, _ = tiny_family("LlamaForCausalLM", tmp_path_factory.mktemp("llama"))
    return folder, AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("kind", LIBRARY_TYPES)
def test_every_library_type_reads_back_within_its_tolerance(llama: Any, tmp_path: Path, kind: str) -> None:
    folder, model, tokenizer = llama
    path = write_gguf(folder, model, tokenizer, kind, tmp_path / f"m-{kind}.gguf", "tiny").path
    ftype = gguf_module().GGUFReader(path).fields["general.file_type"].contents()
    assert ftype == getattr(gguf_module().LlamaFileType, FILE_TYPES[kind]).value
    back, _ = check.read_back(path)
    assert back.config.num_key_value_heads == 2 and not back.config.tie_word_embeddings
    ids = tokenizer(PROBE, add_special_tokens=False)["input_ids"]
    diff = (logits(model, ids) - logits(back, ids)).abs().max().item()
    assert diff <= TYPE_TOLERANCE[kind], f"{kind}: max logit difference {diff}"
    if kind in ("f32", "f16"):
        assert check.greedy(model, ids, GREEDY) == check.greedy(back, ids, GREEDY)


def test_a_sentencepiece_family_without_its_tokenizer_model_says_where_to_put_it(tmp_path: Path) -> None:
    folder, base = tiny_family("Gemma2ForCausalLM", tmp_path)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    with pytest.raises(UserError, match=r"Gemma 2 model needs its SentencePiece tokenizer.model"):
        write_gguf(folder, model, tokenizer, "f16", tmp_path / "x.gguf", "x", base=tmp_path / "none")
    assert not (tmp_path / "x.gguf").exists()


def lora_run(arch: str, where: Path) -> tuple[Path, Path, Any]:
    """(models/finetuned, models/base, the merged model) of a LoRA run on a tiny `arch` model:
    peft adapters on every linear layer with random B (peft starts it at zero), saved as train
    saves them, and the merged model beside them."""
    from peft import LoraConfig, get_peft_model

    folder, base = tiny_family(arch, where)
    shutil.move(folder, base / "_")  # the base folder: the tiny model, its tokenizer(.model)
    for path in (base / "_").iterdir():
        shutil.move(path, base / path.name)
    (base / "_").rmdir()
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    torch.manual_seed(1)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8.0, target_modules="all-linear",
                                                  task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    folder.mkdir()
    peft_model.save_pretrained(folder / "lora_adapter")
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(folder)
    AutoTokenizer.from_pretrained(base).save_pretrained(folder)
    return folder, base, merged


@pytest.mark.parametrize("arch", ["LlamaForCausalLM", "Qwen2ForCausalLM", "Gemma2ForCausalLM"])
def test_a_lora_adapter_gguf_over_the_base_gguf_is_the_merged_model(arch: str, tmp_path: Path) -> None:
    """Tensor by tensor: the base's GGUF weight + alpha/r * B·A from the adapter GGUF equals the
    merged model's GGUF weight (so the names and llama.cpp's q/k row order are right); in
    llama.cpp, where installed, base + adapter greedy-decodes as the merged model does."""
    import numpy as np

    from finetune.export.lora import write_lora_gguf

    gguf = gguf_module()
    folder, base, merged = lora_run(arch, tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    base_model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    base_file = write_gguf(base, base_model, tokenizer, "f32", tmp_path / "base.gguf", "b", base=base).path
    merged_file = write_gguf(folder, merged, tokenizer, "f32", tmp_path / "merged.gguf", "m", base=base).path
    adapter = write_lora_gguf(folder, base, base_model, tmp_path / "lora.gguf", "tiny-lora")
    reader = gguf.GGUFReader(adapter.path)
    assert reader.fields["general.type"].contents() == "adapter"
    assert reader.fields["adapter.lora.alpha"].contents() == 8.0
    lora = {t.name: np.array(t.data, dtype=np.float32) for t in reader.tensors}
    weights = {t.name: np.array(t.data) for t in gguf.GGUFReader(base_file).tensors}
    want = {t.name: np.array(t.data) for t in gguf.GGUFReader(merged_file).tensors}
    adapted = sorted(name.removesuffix(".lora_a") for name in lora if name.endswith(".lora_a"))
    assert adapted and adapter.tensors == 2 * len(adapted)
    assert any(".attn_q." in name for name in adapted) and any(".attn_k." in name for name in adapted)
    for name in adapted:
        delta = (adapter.alpha / adapter.rank) * lora[name + ".lora_b"] @ lora[name + ".lora_a"]
        np.testing.assert_allclose(weights[name] + delta, want[name], atol=2e-3, err_msg=name)
    if llamacpp.available():
        from llama_cpp import Llama

        ids = tokenizer(PROBE, add_special_tokens=False)["input_ids"]
        llm = Llama(model_path=str(base_file), lora_path=str(adapter.path), n_ctx=128, logits_all=True,
                    n_threads=1, verbose=False)
        try:
            assert llamacpp.greedy(llm, ids, GREEDY) == check.greedy(merged.eval(), ids, GREEDY)
        finally:
            llm.close()


@pytest.mark.slow  # a real export stage: three GGUF files, read back and measured
def test_the_stage_ships_a_lora_run_as_base_gguf_plus_adapter(tmp_path: Path) -> None:
    import dataclasses

    import datasets

    from finetune.config.tokenize import TokenizeParams
    from finetune.files import write_json
    from finetune.paths import INFERENCE_FILE, Paths
    from finetune.text.prompts import inference
    from stages import export
    from tests.helpers import run_stage, tiny_params

    local = Paths().under(tmp_path / "project")
    folder, base, _ = lora_run("Qwen2ForCausalLM", tmp_path / "run")
    local.finetuned.parent.mkdir(parents=True)
    shutil.move(folder, local.finetuned)
    shutil.move(base, local.base_model)
    tokenizer = AutoTokenizer.from_pretrained(local.finetuned)
    # as Qwen's instruct models have it: a reply ends with <|im_end|> or <|endoftext|>
    family = local.base_model / "generation_config.json"
    ends = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    family.write_text(json.dumps({**json.loads(family.read_text()), "eos_token_id": ends}))
    write_json(dataclasses.asdict(inference(tokenizer, "chat", TokenizeParams())),
               local.finetuned / INFERENCE_FILE)
    ids = tokenizer(TEXT[0] + TEXT[2])["input_ids"]
    datasets.Dataset.from_dict({"input_ids": [ids], "labels": [ids]}).save_to_disk(local.tokenized / "test")

    summary = run_stage(export, tiny_params(export={"lora_adapter": True, "name": "tiny"}), local)

    lora = local.export / "lora"
    assert sorted(p.name for p in lora.iterdir()) == ["Modelfile", "tiny-base-f16.gguf", "tiny-lora.gguf"]
    text = (lora / "Modelfile").read_text()
    assert "FROM ./tiny-base-f16.gguf\nADAPTER ./tiny-lora.gguf\n" in text
    assert 'PARAMETER stop "<|im_end|>"' in text and 'TEMPLATE """' in text
    adapter = summary["lora_adapter"]
    assert adapter["file"] == str(lora / "tiny-lora.gguf") and adapter["rank"] == 4
    assert adapter["bytes"] < adapter["base_bytes"] / 3  # megabytes instead of the whole model
    assert summary["types"]["f16"]["test"]["tokens"] == len(ids) - 1
    main = (local.export / "Modelfile").read_text()
    assert "ADAPTER" not in main
    for text in (main, (lora / "Modelfile").read_text()):  # every stop token of the family
        assert 'PARAMETER stop "<|im_end|>"\nPARAMETER stop "<|endoftext|>"\n' in text


@pytest.mark.slow  # the pipeline's stages from base_model to export, on a tiny model of each family
@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_each_family_fine_tunes_and_exports_through_the_pipeline(
        arch: str, trained: Any, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """The family's tiny model as `model.source` (a local folder), on the session's tiny data
    (copied from the trained fixture): base_model keeps a SentencePiece tokenizer.model, train
    falls back to eager attention where SDPA is missing (Gemma 2), export reads its file back."""
    from finetune.paths import Paths
    from stages import base_model, export, tokenize, train
    from tests.helpers import run_stage, tiny_params

    params0, paths0 = trained
    folder, base = tiny_family(arch, tmp_path / "source")
    if (base / "tokenizer.model").exists():
        shutil.move(base / "tokenizer.model", folder / "tokenizer.model")
    local = Paths().under(tmp_path / "project")
    shutil.copytree(paths0.split_file("train").parent, local.split_file("train").parent)
    params = tiny_params(model={"source": str(folder)}, train={"max_steps": 1, "eval_steps": 1},
                         export={"name": "tiny"})
    for stage in (base_model, tokenize, train):
        run_stage(stage, params, local)
    assert (local.base_model / "tokenizer.model").exists() == (SPECS[arch][2] == "spm")
    if arch == "Gemma2ForCausalLM":
        assert "Gemma2ForCausalLM does not support it; using eager attention" in capfd.readouterr().err
    summary = run_stage(export, params, local)
    figures = summary["check"]  # f16 of a model one step from random: near-ties, so no greedy check
    assert figures["tokenizer_agrees"] and figures["top_token_agreement"] == 1.0
    assert figures["max_abs_logit_diff"] <= 2.5 * F16_TOLERANCE, figures


def test_a_gemma_attention_scale_llama_cpp_does_not_compute_ends_in_one_line(tmp_path: Path) -> None:
    folder, base = tiny_family("Gemma2ForCausalLM", tmp_path)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    model.config.query_pre_attn_scalar = 100
    with pytest.raises(UserError, match=r"query_pre_attn_scalar 100 is neither head_dim \(256\)"):
        write_gguf(folder, model, tokenizer, "f16", tmp_path / "x.gguf", "x", base=base)
