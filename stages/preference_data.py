"""Gather the preference pairs (finetune/data/preferences.py) from the files `preference.paths`
names and, with `preference.ratings`, from the ratings `uv run rate` wrote
(metrics/human_eval.json), and split them by prompt into data/preferences/{train,val,test}.jsonl,
so no prompt is in two splits. Each bad record fails in one line naming file and line, or with
`preference.on_error: skip` is counted by reason in metrics/preference_data.json. No pairs (the
default): empty files, and preference tuning is off. Params: `seed`, `split`, `preference`
(paths, ratings, on_error)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated, Any

from finetune.config.common import Seed
from finetune.config.loading import Key
from finetune.config.preference import PreferenceParams
from finetune.config.split import SplitParams
from finetune.data.inputs import BadInput, Problems, preference_files
from finetune.data.preferences import (
    RatingsNotUsable,
    dumps,
    file_pairs,
    rated_pairs,
    split_pairs,
)
from finetune.data.readers import read_bytes
from finetune.files import atomic_output, read_json
from finetune.paths import PATHS, SPLITS, Paths
from finetune.stage import stage_main


def read_pairs(files: list[Path], problems: Problems) -> tuple[list[dict[str, Any]], Counter[str]]:
    pairs: list[dict[str, Any]] = []
    per_file: Counter[str] = Counter()
    for path in files:
        try:
            for _, item in file_pairs(path, read_bytes(path)):
                if isinstance(item, BadInput):
                    problems(path.as_posix(), item)
                else:
                    pairs.append(item)
                    per_file[path.as_posix()] += 1
        except BadInput as err:  # the whole file
            problems(path.as_posix(), err)
    return pairs, per_file


def from_ratings(human_eval: Path) -> tuple[list[dict[str, Any]], str | None]:
    """The pairs the ratings make, or none and why."""
    if not human_eval.is_file():
        return [], f"{human_eval}: no ratings yet (uv run rate)"
    try:
        return rated_pairs(read_json(human_eval)), None
    except RatingsNotUsable as e:
        return [], f"{human_eval}: none of its ratings used: {e}"


def run(seed: Seed, split: SplitParams,
        pair_paths: Annotated[list[str], Key(PreferenceParams, "paths")],
        ratings: Annotated[bool, Key(PreferenceParams, "ratings")],
        on_error: Annotated[str, Key(PreferenceParams, "on_error")],
        paths: Paths = PATHS) -> dict[str, Any]:
    problems = Problems(on_error, "preference.on_error")
    pairs, per_file = read_pairs(preference_files(pair_paths), problems)
    rated, not_used = from_ratings(paths.human_eval) if ratings else ([], None)
    if not_used:
        print(f"preference_data: {not_used}")
    pairs += rated
    labels = split_pairs(pairs, split, seed) if pairs else []
    for name in SPLITS:
        with atomic_output(paths.pairs_file(name)) as tmp:
            tmp.write_text("".join(dumps(p) + "\n" for p, label in zip(pairs, labels, strict=True)
                                   if label == name), encoding="utf-8")
    counts = Counter(labels)
    return {"pairs": len(pairs), **{name: counts[name] for name in SPLITS},
            "from_ratings": len(rated), "ratings_not_used": not_used,
            "skipped": problems.total(), "skipped_by_reason": dict(sorted(problems.skipped.items())),
            "files": dict(sorted(per_file.items()))}


def main(argv: list[str] | None = None) -> None:
    stage_main("preference_data", run, argv)


if __name__ == "__main__":
    main()
