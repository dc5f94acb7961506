"""Generating with a model as a person does at the prompt: the request rendered as the model
was trained (finetune.text.prompts.Inference), the reply streamed token by token, a chat's
history kept."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, TextIO

from finetune.models.loading import load_model, load_tokenizer
from finetune.seeding import set_seed
from finetune.text.prompts import (
    Inference,
    Renderer,
    inference_for,
    render_prompts,
    stop_token_ids,
)


def render(prompt: str, tokenizer: Any, asking: Inference, mode: str,
           history: list[dict[str, str]] | None = None, system: str | None = None) -> tuple[str, bool]:
    """The text the model sees and whether the tokenizer adds special tokens, as in training.
    In chat mode the prompt is the next user message after `history`."""
    if mode == "chat":
        messages = [*([{"role": "system", "content": system}] if system else []),
                    *(history or []), {"role": "user", "content": prompt}]
        return Renderer(tokenizer, asking.params).prompt(messages), False
    if mode == "pairs":
        special = not asking.params.use_chat_template
        return render_prompts([prompt], tokenizer, asking.params)[0], special
    return prompt, False


class Generator:
    """One model and its tokenizer, loaded once, generating with fixed sampling settings."""

    def __init__(self, path: Path, args: argparse.Namespace, device: str) -> None:
        self.path, self.args, self.device = path, args, device
        self.asking = inference_for(path, args.inference)
        self.mode = "chat" if args.chat else args.mode or self.asking.mode
        self.model = load_model(path, device)
        self.model.eval()
        self.tokenizer = load_tokenizer(path)
        self.history: list[dict[str, str]] = []  # --chat: the conversation so far
        self.stop = (stop_token_ids(Renderer(self.tokenizer, self.asking.params))
                     if self.mode == "chat" else None)

    def __call__(self, prompt: str, out: TextIO) -> str:
        """Stream the continuation (text mode: after the prompt) to `out`; return it. In a
        --chat session the prompt and reply join the history."""
        import torch

        text, special = render(prompt, self.tokenizer, self.asking, self.mode, self.history,
                               self.args.system)
        inputs = self.tokenizer(text, return_tensors="pt", add_special_tokens=special).to(self.device)
        if self.mode == "text":
            out.write(prompt)
            out.flush()
        streamer = streamer_to(out, self.tokenizer)
        if self.args.seed is not None:
            set_seed(self.args.seed)
        sampling = self.args.temperature > 0
        with torch.inference_mode():
            self.model.generate(
                **inputs, max_new_tokens=self.args.max_new_tokens, do_sample=sampling,
                temperature=self.args.temperature if sampling else None,
                top_p=self.args.top_p if sampling else None, top_k=None,
                repetition_penalty=self.args.repetition_penalty, streamer=streamer,
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
                **({"eos_token_id": self.stop} if self.stop else {}))
        out.write("\n")
        out.flush()
        if self.args.chat:
            self.history += [{"role": "user", "content": prompt},
                             {"role": "assistant", "content": streamer.text.strip()}]
        return streamer.text

    def label(self) -> str:
        return f"── {self.path} ──"


def streamer_to(out: TextIO, tokenizer: Any) -> Any:
    """transformers' TextStreamer, writing to `out` and keeping what it wrote."""
    from transformers import TextStreamer

    class Streamer(TextStreamer):
        text = ""

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            self.text += text
            out.write(text)
            out.flush()

    return Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def prompts(args: argparse.Namespace, stdin: TextIO, out: TextIO) -> Any:
    """The one prompt given, or (interactive) one per line until an empty line or end of input."""
    if args.prompt is not None:
        yield args.prompt
        return
    interactive = stdin.isatty()
    while True:
        if interactive:
            out.write("you> " if args.chat else "prompt> ")
            out.flush()
        line = stdin.readline()
        if not line or not line.strip():
            return
        yield line.rstrip("\n")
