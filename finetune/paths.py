"""Every artifact of the pipeline, relative to the project root, declared once (dvc.yaml names
the same paths; tests/test_params.py checks that the two agree)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path

INFERENCE_FILE = "inference.json"  # in data/tokenized/ (tokenize) and in models/finetuned/ (train)


@dataclass(frozen=True)


class Paths:
    """Every artifact of the pipeline, relative to the project root; dvc.yaml declares the same
    paths and tests/test_params.py checks that the two agree."""

    scratch_texts: Path = Path("data/interim/scratch_texts.json")  # a scratch tokenizer's texts
    ingested: Path = Path("data/interim/ingested.parquet")
    clean: Path = Path("data/interim/clean.parquet")
    processed: Path = Path("data/processed")
    tokenized: Path = Path("data/tokenized")
    preferences: Path = Path("data/preferences")  # preference pairs, split (preference_data)
    base_model: Path = Path("models/base")
    finetuned: Path = Path("models/finetuned")
    preferred: Path = Path("models/preferred")  # after preference tuning (stages/preference.py)
    export: Path = Path("models/export")
    metrics: Path = Path("metrics")
    train_log: Path = Path("dvclive/train")
    preference_log: Path = Path("dvclive/preference")
    checkpoints: Path = Path("models/checkpoints")  # not a DVC output: see dvc.yaml, train
    reports: Path = Path("reports")

    @property
    def analysis(self) -> Path:
        """evaluate's error analysis: per source, per group, the largest gains and losses."""
        return self.metrics / "eval_analysis.json"

    @property
    def eval_base(self) -> Path:
        """The base model's figures and generations (evaluate_base), which evaluate sets beside
        the fine-tuned model's: scored once, not in every experiment."""
        return self.metrics / "eval_base.json"

    @property
    def human_eval(self) -> Path:
        """The blind A/B ratings `uv run rate` writes (git-tracked: a person's judgement)."""
        return self.metrics / "human_eval.json"

    def inputs_file(self, name: str) -> Path:
        """The files `ingest.paths` (name "ingest"), `evaluate.reference_paths` ("reference") or
        `preference.paths` ("preference") name, with their hashes (stages/inputs.py): the stage
        that reads them depends on it."""
        return self.ingested.parent / "inputs" / f"{name}.json"

    def details_file(self, name: str) -> Path:
        """The whole summary of train or evaluate (metrics/<name>.json has the headline)."""
        return self.metrics / f"{name}_details.json"

    def split_file(self, split: str) -> Path:
        return self.processed / f"{split}.parquet"

    def pairs_file(self, split: str) -> Path:
        """One split's preference pairs, one JSON object per line (finetune.data.preferences)."""
        return self.preferences / f"{split}.jsonl"

    @property
    def inference_file(self) -> Path:
        """How the model is asked (finetune.text.prompts.Inference), written by tokenize."""
        return self.tokenized / INFERENCE_FILE

    def under(self, root: Path) -> Paths:
        """The same layout below another directory (tests use tmp_path)."""
        return replace(self, **{f.name: Path(root) / getattr(self, f.name) for f in fields(self)})


PATHS = Paths()


SPLITS = ("train", "val", "test")
