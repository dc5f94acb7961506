"""The mean token loss of a model on a tokenized split (per row of the split too): what evaluate's
perplexities and export's measure of each quantisation are computed with."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from tqdm.auto import tqdm

from finetune.models.collators import collator, model_inputs
from finetune.scoring.scores import RowLosses


class Loss(NamedTuple):
    mean: float            # over every labelled token
    tokens: int
    by_row: RowLosses | None  # per test row, for a dataset with a `row` column


def _row_ids(examples: list[dict[str, Any]], width: int) -> Any:
    """Each token's row, as a (batch, width) tensor: packed and fixed-size rows carry one per
    token; an unpacked example (padded to `width` at either end) is one row throughout."""
    import torch

    rows = [example.pop("row") for example in examples]
    if all(len(r) == width for r in rows):
        return torch.tensor(rows)
    return torch.tensor([[r[0]] * width for r in rows])


def mean_token_loss(model: Any, dataset: Any, tokenizer: Any, batch_size: int, device: str,
                    label: str, n_rows: int = 0) -> Loss:
    """Cross-entropy averaged over every labelled token (not over batches), without gradients;
    for a dataset with a `row` column, also summed per row of the split, given its n_rows."""
    import torch
    import torch.nn.functional as F

    collate = collator(tokenizer, packed="position_ids" in dataset.column_names)
    has_rows = "row" in dataset.column_names
    row_loss, row_tokens = np.zeros(n_rows), np.zeros(n_rows, dtype=np.int64)
    total, count = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for start in tqdm(range(0, len(dataset), batch_size), desc=f"perplexity ({label})",
                          unit="batch"):
            examples = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            width = max(len(e["input_ids"]) for e in examples)
            rows = _row_ids(examples, width) if has_rows else None
            batch = collate(examples)
            batch = {k: v.to(device) for k, v in batch.items()}
            inputs = model_inputs({k: v for k, v in batch.items() if k != "labels"})
            logits = model(**inputs).logits.float()
            # shift the labels, not the logits: slicing the (batch, seq, vocab) logits would copy them
            labels = F.pad(batch["labels"][:, 1:], (0, 1), value=-100)
            flat = logits.view(-1, logits.size(-1))
            total += F.cross_entropy(flat, labels.reshape(-1), ignore_index=-100,
                                     reduction="sum").item()
            count += int((labels != -100).sum())
            if rows is not None and n_rows:  # a predicted token's loss goes to that token's row
                # (unreduced apart from the sum above, which stays the headline's exact figure)
                token = F.cross_entropy(flat, labels.reshape(-1), ignore_index=-100,
                                        reduction="none").cpu().numpy()
                where = F.pad(rows[:, 1:], (0, 1), value=-1).reshape(-1).numpy()
                scored = (labels.reshape(-1) != -100).cpu().numpy() & (where >= 0)
                np.add.at(row_loss, where[scored], token[scored])
                np.add.at(row_tokens, where[scored], 1)
    by_row = RowLosses(row_loss, row_tokens) if has_rows and n_rows else None
    return Loss(total / max(count, 1), count, by_row)
