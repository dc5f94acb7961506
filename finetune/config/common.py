"""params.yaml's top-level keys that are not sections: `seed`, `mode`, `num_proc`."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
# text: running prose (books) | pairs: prompt/response records | chat: conversations
Mode = Literal["text", "pairs", "chat"]
# processes (tokenizer threads) of ingest, clean and tokenize; 0: one per CPU core. Speed only:
# the outputs are the same bytes for any value, so dvc.yaml does not make it a dependency
NumProc = Annotated[int, Field(ge=0, le=1024)]

DEFAULTS = {"seed": 42, "mode": "text", "num_proc": 0}
