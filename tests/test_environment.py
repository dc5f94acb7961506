"""No environment variable changes a byte of what the stages write: the data stages, base_model
(from a local Hugging Face folder, loaded by from_pretrained as a hub model would be) and tokenize
run in two fresh processes, once in a plain environment and once with the settings people have
(offline hub, another HF_HOME, tokenizer threads off, another locale, time zone and hash seed),
and every output file is compared."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from finetune.config.schema import Params
from finetune.paths import Paths
from tests.helpers import BOOK_A, BOOK_B, tiny_params

pytestmark = pytest.mark.slow  # the data stages as processes, twice

OUTPUTS = ("data/interim", "data/processed", "data/tokenized", "models/base")
VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HOME",
             "TOKENIZERS_PARALLELISM", "LC_ALL", "LANG", "TZ", "PYTHONHASHSEED")
RUN = ("from stages import ingest, clean, split, scratch_texts, base_model, tokenize\n"
       "for stage in (ingest, clean, split, scratch_texts, base_model, tokenize):\n"
       "    stage.main([])\n")  # as dvc repro runs them, metrics included


def digests(root: Path) -> dict[str, str]:
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for top in OUTPUTS for path in sorted((root / top).rglob("*")) if path.is_file()}


def run_stages(root: Path, env: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-c", RUN], cwd=root, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def test_no_environment_variable_changes_the_outputs(trained: tuple[Params, Paths],
                                                     tmp_path: Path) -> None:
    source = tmp_path / "hub-model"  # a Hugging Face folder, as a downloaded model is one
    shutil.copytree(trained[1].base_model, source)
    params = tiny_params(model={"source": str(source)}, clean={"max_chars": 400})
    plain = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    plain["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    usual = {**plain, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
             "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home"),
             "TOKENIZERS_PARALLELISM": "false", "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8",
             "TZ": "Pacific/Kiritimati", "PYTHONHASHSEED": "12345"}
    results = []
    for name, env in (("plain", plain), ("usual", usual)):
        root = tmp_path / name
        (root / "data" / "raw").mkdir(parents=True)
        (root / "data" / "raw" / "mill.md").write_text(BOOK_A, encoding="utf-8")
        (root / "data" / "raw" / "harbour.txt").write_text(BOOK_B, encoding="utf-8")
        (root / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json")))
        run_stages(root, env)
        results.append(digests(root))
    assert "models/base/tokenizer_config.json" in results[0] and len(results[0]) > 10
    assert results[0] == results[1], {k for k in results[0] if results[0][k] != results[1].get(k)}
