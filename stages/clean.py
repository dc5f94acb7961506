"""Clean data/interim/ingested.parquet into data/interim/clean.parquet: boilerplate and markup
removed, whitespace normalised, personal data replaced by placeholders (counted by kind),
documents cut into passages, short ones and duplicates dropped (counted by reason). Params:
`mode`, `clean` (and `num_proc`, speed only)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from tqdm.auto import tqdm

from finetune.config.clean import CleanParams
from finetune.config.common import Mode, NumProc
from finetune.data import conversations
from finetune.data.cleaning import COLUMNS, Seen, clean_group, first_seen
from finetune.data.records import KEY
from finetune.errors import UserError
from finetune.files import parquet_rows, parquet_sink, row_groups, string_schema
from finetune.parallel import ordered_map, workers
from finetune.paths import PATHS, Paths
from finetune.stage import stage_main


def run(mode: Mode, clean: CleanParams, num_proc: NumProc = 0, paths: Paths = PATHS) -> dict[str, Any]:
    """ingested.parquet to clean.parquet one row group at a time, `num_proc` groups at once."""
    tasks = [(paths.ingested, i, mode, clean) for i in range(row_groups(paths.ingested))]
    seen, dropped, redacted = Seen(), Counter[str](), Counter[str]()
    records_in, chars_out, documents = 0, 0, set()
    total = parquet_rows(paths.ingested)
    progress = tqdm(desc="clean", unit="record", unit_scale=True, total=total, disable=total < 1000)
    with parquet_sink(paths.clean, string_schema(COLUMNS[mode])) as sink, progress:
        for rows, group_dropped, group_redacted, n_in in ordered_map(clean_group, tasks,
                                                                      workers(num_proc)):
            progress.update(n_in)
            dropped.update(group_dropped)
            redacted.update(group_redacted)
            if clean.dedupe:
                rows = first_seen(rows, mode, seen, dropped)
            sink.add(rows)
            records_in += n_in
            documents.update(row["doc_id"] for row in rows)
            chars_out += sum(conversations.text_chars(conversations.loads(row["conversation"]))
                             if mode == "chat" else len(row[k]) for row in rows for k in KEY[mode])
        if not sink.rows:
            reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(dropped.items()) if n)
            raise UserError(f"all {records_in} records were dropped ({reasons}); check the "
                            "input or loosen clean.min_chars / clean.max_chars")
    summary = {"records_in": records_in, "records_out": sink.rows, "documents_out": len(documents),
               "chars_out": chars_out, "dropped": sum(dropped.values()),
               "dropped_by_reason": {k: v for k, v in sorted(dropped.items()) if v}}
    if kinds := clean.redacted(mode):  # what was replaced, before short and duplicate rows went
        summary["redacted"] = {k: redacted[k] for k in kinds}
    return summary


def main(argv: list[str] | None = None) -> None:
    stage_main("clean", run, argv)


if __name__ == "__main__":
    main()
