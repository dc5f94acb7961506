"""The generation engine behind `serve`: continuous batching of the requests in flight on one
model, in one thread.

Every step decodes one token for each running request together (one forward pass for the batch);
a request that arrives joins the batch at the next step, after a prefill of its prompt, and one
that ends leaves it, so a long request never holds up a short one. Rows are left-padded to a
common length in the key/value cache (an attention mask hides the padding, positions count real
tokens), which is what `model.generate` does for a batch; greedy answers are the same as the
request alone (tests/test_serve.py checks it at 1, 4, 8 and 16 at once). Each request keeps its
own sampling (temperature, top_p, seed, logit_bias, penalties), its own token budget and stop
strings, a deadline, and a cancel flag that a disconnected client sets: it leaves the batch at
the next step. The waiting line is bounded (Busy beyond it).

Models whose cache is not the plain dynamic one (sliding-window or hybrid layers) run one
request at a time through the same loop."""

from __future__ import annotations

import asyncio
import collections
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

EventSink = Callable[[tuple[str, Any]], None]


class Busy(Exception):
    """The waiting line is full: the request is refused, to be retried (503, Retry-After)."""


@dataclass
class Job:
    """One request as the engine runs it. Events go to `sink`: ("token", id) for each generated
    token, then ("end", finish_reason) or ("error", message)."""

    prompt: list[int]
    max_new_tokens: int
    sink: EventSink
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0  # the model's default (transformers' multiplicative one)
    stop: list[str] = field(default_factory=list)
    deadline: float = math.inf  # time.monotonic() by which it ends ("length")
    cancelled: threading.Event = field(default_factory=threading.Event)
    generated: list[int] = field(default_factory=list)
    generator: Any = None


def threadsafe_sink(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> EventSink:
    """A sink that hands the engine's events to an asyncio queue on `loop`."""
    return lambda event: loop.call_soon_threadsafe(queue.put_nowait, event)


class Engine:
    """`model` and `tokenizer` (the tokenizer decodes the tail of an answer for its stop
    strings), at most `max_batch` requests decoded together and `max_queue` waiting."""

    def __init__(self, model: Any, tokenizer: Any, stop_ids: list[int], max_batch: int = 16,
                 max_queue: int = 64) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.stop_ids = set(stop_ids)
        self.pad_id = stop_ids[0] if stop_ids else 0
        self.max_batch = max_batch if self._joinable() else 1
        self.max_queue = max_queue
        self.waiting: collections.deque[Job] = collections.deque()
        self.wake = threading.Condition()
        self.running: list[Job] = []
        self.cancelled = 0  # requests that left before their end (a client gone)
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, name="serve-engine", daemon=True)
        self.thread.start()

    def _joinable(self) -> bool:
        """Whether rows can join and leave the cache: every layer a plain dynamic one."""
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        try:
            cache = DynamicCache(config=self.model.config)
        except Exception:
            return False
        return all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", []) or [None])

    # --- the request side (the event loop's thread) ---

    def submit(self, job: Job) -> None:
        with self.wake:
            if self.stopping:
                raise Busy("the server is shutting down")
            if len(self.waiting) >= self.max_queue:  # those whose clients left make room first
                gone = [j for j in self.waiting if j.cancelled.is_set()]
                self.waiting = collections.deque(j for j in self.waiting if not j.cancelled.is_set())
                self.cancelled += len(gone)
            if len(self.waiting) >= self.max_queue:
                raise Busy(f"{len(self.running)} requests running and {len(self.waiting)} waiting")
            self.waiting.append(job)
            self.wake.notify()

    def load(self) -> dict[str, int]:
        return {"running": len(self.running), "waiting": len(self.waiting), "cancelled": self.cancelled}

    def close(self) -> None:
        with self.wake:
            self.stopping = True
            self.wake.notify()
        self.thread.join(timeout=10)

    # --- the engine thread ---

    def _loop(self) -> None:
        import torch

        state: dict[str, Any] = {}  # the cache, mask, next positions and tokens of `running`
        while True:
            with self.wake:
                while not self.stopping and not self.waiting and not self.running:
                    self.wake.wait()
                if self.stopping:  # nobody is left waiting for an answer that never comes
                    for job in [*self.running, *self.waiting]:
                        job.sink(("error", "the server is shutting down"))
                    return
                joining = []
                while self.waiting and len(self.running) + len(joining) < self.max_batch:
                    job = self.waiting.popleft()
                    if job.cancelled.is_set():
                        self.cancelled += 1
                    else:
                        joining.append(job)
            try:
                with torch.inference_mode():
                    if joining:
                        state = self._join(state, joining)
                    if self.running:
                        state = self._step(state)
            except Exception as e:  # a fault fails the requests in flight, not the server
                for job in {id(j): j for j in [*self.running, *joining]}.values():
                    job.sink(("error", f"{type(e).__name__}: {e}"))
                self.running, state = [], {}

    def _forward(self, ids: Any, mask: Any, positions: Any, cache: Any) -> Any:
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                         past_key_values=cache, use_cache=True, logits_to_keep=1)  # not a prefill's all
        return out.logits[:, -1, :].float(), out.past_key_values

    def _join(self, state: dict[str, Any], jobs: list[Job]) -> dict[str, Any]:
        """Prefill `jobs` (left-padded together), pick their first tokens, and merge their cache
        rows into the running batch's, padding the shorter side on the left."""
        import torch

        device = self.model.device
        width = max(len(j.prompt) for j in jobs)
        ids = torch.full((len(jobs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(jobs), width), dtype=torch.long)
        for i, job in enumerate(jobs):
            ids[i, width - len(job.prompt):] = torch.tensor(job.prompt)
            mask[i, width - len(job.prompt):] = 1
            if job.seed is not None:
                job.generator = torch.Generator(device=device).manual_seed(job.seed)
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits, cache = self._forward(ids, mask, positions, None)
        tokens = self._choose(logits, jobs)
        fresh = {"cache": cache, "mask": mask, "next": positions[:, -1:] + 1, "tokens": tokens}
        merged = merge(state, fresh) if state else fresh
        start = len(self.running)
        self.running += jobs
        return self._emit(merged, start)

    def _step(self, state: dict[str, Any]) -> dict[str, Any]:
        import torch

        ones = torch.ones((len(self.running), 1), dtype=state["mask"].dtype, device=state["mask"].device)
        mask = torch.cat([state["mask"], ones], dim=-1)
        logits, cache = self._forward(state["tokens"], mask, state["next"], state["cache"])
        tokens = self._choose(logits, self.running)
        return self._emit({"cache": cache, "mask": mask, "next": state["next"] + 1, "tokens": tokens})

    def _emit(self, state: dict[str, Any], start: int = 0) -> dict[str, Any]:
        """Hand each row from `start` on its new token (the rows before it, after a join, had
        theirs at the last step); drop the rows that ended from the batch."""
        import torch

        keep: list[int] = list(range(start))
        now = time.monotonic()
        tokens = state["tokens"][:, 0].tolist()
        for i, job in enumerate(self.running[start:], start):
            token = tokens[i]
            if job.cancelled.is_set():
                self.cancelled += 1
                continue
            if token in self.stop_ids:
                job.sink(("end", "stop"))
                continue
            job.generated.append(token)
            job.sink(("token", token))
            if len(job.generated) >= job.max_new_tokens or now >= job.deadline:
                job.sink(("end", "length"))
            elif job.stop and self._hit_stop(job):
                job.sink(("end", "stop"))
            else:
                keep.append(i)
        if len(keep) == len(self.running):
            return state
        self.running = [self.running[i] for i in keep]
        if not keep:
            return {}
        index = torch.tensor(keep, device=state["mask"].device)
        state["cache"].batch_select_indices(index)
        state = {**state, "mask": state["mask"][index], "next": state["next"][index],
                 "tokens": state["tokens"][index]}
        unused = int(torch.cumprod((state["mask"].sum(0) == 0).int(), 0).sum())
        if unused:  # columns that are padding in every row left
            state["mask"] = state["mask"][:, unused:]
            for layer in state["cache"].layers:
                layer.keys, layer.values = layer.keys[..., unused:, :], layer.values[..., unused:, :]
        return state

    def _hit_stop(self, job: Job) -> bool:
        longest = max(map(len, job.stop))  # a character can take up to 4 byte-level tokens
        tail = self.tokenizer.decode(job.generated[-(4 * longest + 2):], skip_special_tokens=True)
        return any(s in tail for s in job.stop)

    def _choose(self, logits: Any, jobs: list[Job]) -> Any:
        """The next token of each row ([rows, 1]), each with its own settings: the model's
        repetition penalty, then frequency/presence penalties and logit_bias (OpenAI's), then
        greedy, or temperature and top_p sampling (with the row's seed, if it has one)."""
        import torch

        chosen = []
        for i, job in enumerate(jobs):
            row = logits[i]
            if job.repetition_penalty != 1.0:
                seen = torch.tensor([*job.prompt, *job.generated], device=row.device)
                picked = row[seen]
                row[seen] = torch.where(picked > 0, picked / job.repetition_penalty,
                                        picked * job.repetition_penalty)
            if (job.frequency_penalty or job.presence_penalty) and job.generated:
                counts = torch.bincount(torch.tensor(job.generated, device=row.device),
                                        minlength=row.shape[0])[: row.shape[0]].to(row.dtype)
                row -= job.frequency_penalty * counts + job.presence_penalty * (counts > 0).to(row.dtype)
            for token, bias in job.logit_bias.items():
                row[token] += bias
            if job.temperature == 0:
                chosen.append(int(torch.argmax(row)))
                continue
            probs = torch.softmax(row / job.temperature, dim=-1)
            if job.top_p < 1.0:
                ordered, order = torch.sort(probs, descending=True)
                drop = ordered.cumsum(-1) - ordered > job.top_p  # keep the smallest set reaching top_p
                ordered[drop] = 0
                probs = torch.zeros_like(probs).scatter_(0, order, ordered)
            chosen.append(int(torch.multinomial(probs, 1, generator=job.generator)))
        return torch.tensor(chosen, device=logits.device).unsqueeze(-1)


def merge(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Two batches' states as one: the shorter cache and mask padded on the left to the longer."""
    import torch

    width = max(old["mask"].shape[1], new["mask"].shape[1])

    def left_pad(x: Any, to: int, dim: int) -> Any:
        missing = to - x.shape[dim]
        if missing == 0:
            return x
        shape = list(x.shape)
        shape[dim] = missing
        return torch.cat([torch.zeros(shape, dtype=x.dtype, device=x.device), x], dim=dim)

    for a, b in zip(old["cache"].layers, new["cache"].layers, strict=True):
        a.keys = torch.cat([left_pad(a.keys, width, -2), left_pad(b.keys, width, -2)], dim=0)
        a.values = torch.cat([left_pad(a.values, width, -2), left_pad(b.values, width, -2)], dim=0)
    return {"cache": old["cache"],
            "mask": torch.cat([left_pad(old["mask"], width, 1), left_pad(new["mask"], width, 1)]),
            "next": torch.cat([old["next"], new["next"]]),
            "tokens": torch.cat([old["tokens"], new["tokens"]])}
