"""Batches of examples for the model: padded pairs, packed rows (their position ids keep the
examples apart), and what the model is given of a batch."""

from __future__ import annotations

import functools
from typing import Any


def collator(tokenizer: Any, packed: bool = False, flatten: bool = False) -> Any:
    """Batches of examples: padded (input_ids with the pad token, labels with -100, as pairs have
    varied lengths), or for packed rows (which carry position_ids) stacked as they are, or with
    `flatten` laid end to end as one row: FlashAttention 2 in transformers reads packed
    sequences from position ids only in a batch of one row."""
    from transformers import DataCollatorForSeq2Seq

    if packed:
        return functools.partial(collate_packed, flatten=flatten)
    return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, padding=True)


def collate_packed(rows: list[dict[str, Any]], flatten: bool = False) -> dict[str, Any]:
    """Packed rows (finetune.text.packing.pack_examples) stacked, with an attention_mask that marks
    the real tokens, for counting them: the padding at the end of a row is the last sequence
    (its position ids restart at 0) when it is all pad tokens without labels. model_inputs
    removes the mask again before the model sees it."""
    import torch

    batch = {key: torch.tensor([row[key] for row in rows]) for key in rows[0]}
    positions, labels = batch["position_ids"], batch["labels"]
    width = positions.size(1)
    index = torch.arange(width).expand_as(positions)
    tail = torch.where(positions == 0, index, torch.zeros_like(index)).max(dim=1).values
    after = index >= tail[:, None]
    pad = after & (labels == -100) & (batch["input_ids"] == batch["input_ids"].gather(1, tail[:, None]))
    is_tail = (pad.sum(dim=1) == width - tail) & (tail > 0)
    length = torch.where(is_tail, tail, torch.full_like(tail, width))
    batch["attention_mask"] = (index < length[:, None]).long()
    if flatten:  # the position ids restart at every example and at each row's padding
        batch = {key: value.reshape(1, -1) for key, value in batch.items()}
    return batch


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """What the model gets for a batch. Packed rows go without the attention mask and the KV
    cache: transformers tells packed sequences apart by their position ids only when there is
    neither, and then keeps attention inside each sequence."""
    if "position_ids" not in batch:
        return batch
    return {**{k: v for k, v in batch.items() if k != "attention_mask"}, "use_cache": False}
