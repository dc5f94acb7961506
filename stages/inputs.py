"""What the user's files are, byte for byte: the files `ingest.paths`,
`evaluate.reference_paths` and `preference.paths` name, found as ingest, evaluate and
preference_data find them, each with its MD5, in data/interim/inputs/ingest.json, reference.json
and preference.json. dvc.yaml cannot list those paths as deps (its
templating interpolates no list into `deps`, and a glob is no dep), so this stage runs on every
`dvc repro` (always_changed) and the stages that read them depend on what it writes: a
byte changed, a file added or removed in any folder they read, whatever its name, reruns them,
and nothing else does. A path outside the project is refused here, before any work. Params:
`ingest` (paths, follow_symlinks, on_error), `evaluate.reference_paths`, `preference.paths`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from finetune.config.evaluate import EvaluateParams
from finetune.config.ingest import IngestParams
from finetune.config.loading import Key
from finetune.config.preference import PreferenceParams
from finetune.data.inputs import Problems, discover, inside, manifest, preference_files
from finetune.data.references import reference_files
from finetune.files import write_json
from finetune.paths import PATHS, Paths
from finetune.stage import stage_main


def run(ingest: IngestParams,
        reference_paths: Annotated[list[str], Key(EvaluateParams, "reference_paths")],
        preference_paths: Annotated[list[str], Key(PreferenceParams, "paths")],
        paths: Paths = PATHS) -> dict[str, Any]:
    inside(ingest.paths, "ingest.paths", Path.cwd())
    inside(reference_paths, "evaluate.reference_paths", Path.cwd())
    inside(preference_paths, "preference.paths", Path.cwd())
    problems = Problems(ingest.on_error)
    files, ignored = discover(ingest.paths, ingest, problems)
    found = manifest(ingest.paths, files, ignored + problems.files)
    reference = manifest(reference_paths, reference_files(reference_paths))
    preference = manifest(preference_paths, preference_files(preference_paths))
    write_json(found, paths.inputs_file("ingest"))
    write_json(reference, paths.inputs_file("reference"))
    write_json(preference, paths.inputs_file("preference"))
    return {"files": len(found["files"]), "ignored": len(found["ignored"]),
            "reference_files": len(reference["files"]), "preference_files": len(preference["files"])}


def main(argv: list[str] | None = None) -> None:
    stage_main("inputs", run, argv, write_metrics=False, record_params=False)


if __name__ == "__main__":
    main()
