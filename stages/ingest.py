"""Read the files under `ingest.paths` (txt, md, html, json, jsonl, csv, parquet; books: epub,
docx, odt, rtf, pdf, Scrivener) into data/interim/ingested.parquet: one row per document or book
chapter (text mode), per prompt/response pair (pairs) or per conversation (chat), with a stable
doc_id and the record's group. Params: `mode`, `ingest` (and `num_proc`, speed only)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from finetune.config.common import Mode, NumProc
from finetune.config.ingest import IngestParams
from finetune.data.inputs import Problems, discover
from finetune.data.readers import COLUMNS, ingest_summary, read_files
from finetune.errors import UserError
from finetune.files import parquet_sink, string_schema
from finetune.parallel import workers
from finetune.paths import PATHS, Paths
from finetune.stage import stage_main


def run(mode: Mode, ingest: IngestParams, num_proc: NumProc = 0, paths: Paths = PATHS) -> dict[str, Any]:
    """Files to data/interim/ingested.parquet, written in row groups as they are read."""
    problems = Problems(ingest.on_error)
    files, ignored = discover(ingest.paths, ingest, problems)
    n_bytes = 0
    groups: Counter[str] = Counter()
    not_prose: Counter[str] = Counter()
    with parquet_sink(paths.ingested, string_schema(COLUMNS[mode])) as sink:
        for rows, size in read_files(files, mode, ingest, problems, workers(num_proc), not_prose):
            sink.add(rows)
            n_bytes += size
            groups.update(row["group"] for row in rows)
        if not sink.rows:
            raise UserError(f"ingest.paths: no usable records in {len(files)} file(s) "
                            f"(skipped: {dict(sorted(problems.skipped.items())) or 'none'})")
        field = ingest.group_field
        if field and not set(groups) - {""}:
            raise UserError(f"ingest.group_field: no record has a {field!r} field or column "
                            "(set it to the right name, or null)")
    counts = ingest_summary(files, sink.rows, n_bytes, problems, not_prose)
    by_reason = counts.pop("skipped_by_reason")
    summary = {**counts, "ignored_files": len(ignored),  # the summary line shows the first ten
               "not_read": not_read(problems.files + ignored), "skipped_by_reason": by_reason,
               "skipped_files": problems.files, "ignored": ignored}
    if field:  # records per group; "" counts those without one
        summary["groups"] = dict(sorted(groups.items()))
    return summary


def not_read(left_out: list[dict[str, str]], shown: int = 3) -> str:
    """The first few files left out, for the summary line: "data/mine/memo.pages (unsupported
    .docx)"; all of them are in metrics/ingest.json."""
    named = [f"{f['file']} ({f['reason']})" for f in left_out[:shown]]
    more = f" and {len(left_out) - shown} more" if len(left_out) > shown else ""
    return "; ".join(named) + more if named else "none"


def main(argv: list[str] | None = None) -> None:
    stage_main("ingest", run, argv)


if __name__ == "__main__":
    main()
