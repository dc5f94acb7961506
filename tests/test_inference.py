"""How a trained model folder is asked by readers of the folder alone (serve, vLLM, the GGUF
export): its chat template must render a request exactly as training and `generate` render it,
token for token, in every mode; its generation config must stop where training's examples end."""

from __future__ import annotations

from typing import Any

import pytest
from transformers import GenerationConfig

from finetune.config.schema import Params
from finetune.config.tokenize import TokenizeParams
from finetune.models.loading import load_tokenizer
from finetune.paths import Paths
from finetune.text.prompts import SAMPLING, Renderer, inference, render_prompts

HISTORY = [{"role": "user", "content": "Hi, my Aster kettle leaks."},
           {"role": "assistant", "content": "Sorry to hear that! What is your order number?"},
           {"role": "user", "content": "It is FH-21290."}]


def served_ids(tokenizer: Any, template: str, messages: list[dict[str, str]]) -> list[int]:
    """The ids a server gets for a chat request: the folder's template, generation prompt on."""
    return list(tokenizer.apply_chat_template(messages, chat_template=template, tokenize=True,
                                              add_generation_prompt=True, return_dict=True)["input_ids"])


def trained_ids(tokenizer: Any, text: str, special: bool) -> list[int]:
    return tokenizer(text, add_special_tokens=special)["input_ids"]


@pytest.fixture(params=["smollm2", "tiny"])
def tokenizer(request: pytest.FixtureRequest, trained: tuple[Params, Paths]) -> Any:
    if request.param == "smollm2":
        return request.getfixturevalue("smollm2_tokenizer")
    return load_tokenizer(trained[1].base_model)  # no chat template of its own


def test_chat_mode_requests_render_as_training_rendered_them(tokenizer: Any) -> None:
    for p in (TokenizeParams(), TokenizeParams(system_prompt="You are Robin.")):
        asked = inference(tokenizer, "chat", p)
        want = Renderer(tokenizer, p).prompt(HISTORY)
        assert served_ids(tokenizer, asked.chat_template, HISTORY) == trained_ids(tokenizer, want, False)
        # a request with its own system message keeps it instead of the default
        own = [{"role": "system", "content": "Be brief."}, *HISTORY]
        assert served_ids(tokenizer, asked.chat_template, own) == trained_ids(
            tokenizer, Renderer(tokenizer, p).prompt(own), False)
    assert asked.stop_token_ids[-1] == tokenizer.eos_token_id


def test_pairs_mode_requests_render_the_last_question_with_the_prompt_template(tokenizer: Any) -> None:
    p = TokenizeParams(prompt_template='Q: "{prompt}"\n{% not jinja %}\nA:')
    asked = inference(tokenizer, "pairs", p)
    want = render_prompts([HISTORY[-1]["content"]], tokenizer, p)[0]
    assert served_ids(tokenizer, asked.chat_template, HISTORY) == trained_ids(tokenizer, want, True)
    assert asked.stop_token_ids == [tokenizer.eos_token_id]
    # a whole example renders as training joined it: prompt, answer, EOS
    example = [HISTORY[0], HISTORY[1]]
    text = tokenizer.apply_chat_template(example, chat_template=asked.chat_template, tokenize=False)
    assert text.endswith(render_prompts([HISTORY[0]["content"]], tokenizer, p)[0].removeprefix(
        tokenizer.bos_token or "") + HISTORY[1]["content"] + tokenizer.eos_token)


def test_pairs_mode_with_the_chat_template_asks_as_training_did(smollm2_tokenizer: Any) -> None:
    p = TokenizeParams(use_chat_template=True)
    asked = inference(smollm2_tokenizer, "pairs", p)
    question = [HISTORY[-1]]
    want = render_prompts([question[0]["content"]], smollm2_tokenizer, p)[0]
    assert served_ids(smollm2_tokenizer, asked.chat_template, question) == trained_ids(
        smollm2_tokenizer, want, False)


def test_text_mode_requests_are_continued_as_prose(tokenizer: Any) -> None:
    asked = inference(tokenizer, "text", TokenizeParams())
    messages = [{"role": "system", "content": "ignored"}, *HISTORY]
    assert served_ids(tokenizer, asked.chat_template, messages) == trained_ids(
        tokenizer, HISTORY[-1]["content"], False)


def test_the_finetuned_folder_carries_its_template_stop_tokens_and_sampling(
        trained_chat: tuple[Params, Paths]) -> None:
    params, paths = trained_chat
    tokenizer = load_tokenizer(paths.finetuned)
    asked = inference(load_tokenizer(paths.base_model), "chat", params.tokenize)
    assert tokenizer.chat_template == asked.chat_template
    config = GenerationConfig.from_pretrained(paths.finetuned)
    stop = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    assert stop == asked.stop_token_ids
    assert {key: getattr(config, key) for key in SAMPLING} == SAMPLING
    assert not load_tokenizer(paths.base_model).chat_template  # the base folder is untouched
