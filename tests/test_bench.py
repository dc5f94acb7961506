"""Every benchmark entry point (bench/) run through its real code path on a tiny model, so none
can rot: `python -m bench --smoke`, and bench.sft, bench.gguf, bench.serve, bench.large_corpus,
bench.redaction and the GPU check's dry run (bench.gpu) in their smallest runs, each writing into tmp_path
(never the committed bench/ results). The figures mean nothing at this size: only their presence
and sign are checked, never a timing."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from bench import __main__ as bench_main
from bench import common, gguf, gpu, large_corpus, model_bench, serve, sft

SECTION = "<!-- other:start -->\nkept\n<!-- other:end -->\n"  # another benchmark's part


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """One torch thread, here and in the stages and servers the benchmarks start: at this size,
    on busy cores, a second thread mostly waits for the first (the gguf test: 2 s, 15 s with 2)."""
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A base model folder: a tiny Llama with a scratch tokenizer and the plain chat template."""
    return common.tiny_base(tmp_path_factory.mktemp("tiny-base"))


def positive(figures: dict, *keys: str) -> None:
    for key in keys:
        assert figures[key] > 0, f"{key}: {figures[key]}"


def test_write_head_and_section_keep_the_other_parts(tmp_path: Path) -> None:
    md = tmp_path / "results.md"
    md.write_text("old table\n\n" + SECTION)
    common.write_head(md, "new table\n")
    assert md.read_text() == "new table\n\n" + SECTION
    common.write_section(md, "<!-- sft:start -->\nsft\n<!-- sft:end -->\n",
                         ("<!-- sft:start -->", "<!-- sft:end -->"))
    common.write_section(md, "<!-- other:start -->\nnew\n<!-- other:end -->\n",
                         ("<!-- other:start -->", "<!-- other:end -->"))
    assert md.read_text() == ("new table\n\n<!-- other:start -->\nnew\n<!-- other:end -->\n"
                              "\n<!-- sft:start -->\nsft\n<!-- sft:end -->\n")


def test_model_bench(tiny_base: Path) -> None:
    train = model_bench.train_throughput(tiny_base, True, 1, real_tokens=256)
    assert train["real_tokens"] == 256
    positive(train, "packed_tokens_s", "tutorial_tokens_s", "train_vs_tutorial")
    evaluated = model_bench.eval_throughput(tiny_base, True, 1, examples=4)
    assert evaluated["examples"] == 4
    positive(evaluated, "batched_tokens_s", "loop_tokens_s", "eval_vs_loop")


@pytest.mark.slow  # a real dvc pipeline (the cached rerun), then four stage processes: ~25 s
def test_bench_main_smoke(tiny_base: Path, tmp_path: Path) -> None:
    """`python -m bench --smoke`: the cached rerun in a copy of the project, the data stages as
    subprocesses, training and evaluation; results.json and the table in results.md beside it,
    whose other sections stay."""
    out = tmp_path / "results.json"
    out.with_suffix(".md").write_text("old\n\n" + SECTION)
    bench_main.main(["--smoke", "--base", str(tiny_base), "--out", str(out)])
    results = json.loads(out.read_text())
    assert results["smoke"] and results["quick"] and results["repeats"] == 1
    positive(results, "cached_rerun_s")
    positive(results["data_path"], "megabytes", "data_path_seconds", "data_path_tokens_s",
             "raw_tokens_s", "tokenize_vs_raw", "peak_memory_gb")
    assert set(results["data_path"]["stage_seconds"]) == set(bench_main.DATA_STAGES)
    assert list(results["scaling"]) == ["0.05"]
    positive(results["train"], "packed_tokens_s", "tutorial_tokens_s")
    positive(results["eval"], "batched_tokens_s", "loop_tokens_s")
    md = out.with_suffix(".md").read_text()
    assert md.startswith("Machine:") and "| Cached `dvc repro`" in md and "(--smoke)" in md
    assert md.endswith(SECTION) and "old" not in md


def sft_figures(tiny_base: Path, tmp_path: Path, contenders: list[str]) -> dict:
    out = tmp_path / "sft.json"
    sft.main(["--quick", "--steps", "2", "--base", str(tiny_base), "--out", str(out),
              "--contenders", *contenders])
    assert not out.with_name("results.md").exists()  # --quick figures are not the table's
    saved = json.loads(out.read_text())
    assert saved["steps"] == 2 and set(saved["results"]) == set(sft.DATA)
    for r in saved["results"].values():
        for name in contenders:
            positive(r[name], "tokens_s", "seconds", "real_tokens", "perplexity")
        positive(r, "base_perplexity", "train_examples", "packing_efficiency")
    assert "| pairs | this pipeline, packed |" in sft.table(saved["results"], 2, saved["model"])
    return saved["results"]


def test_sft_table_from_the_committed_figures(tmp_path: Path) -> None:
    """`bench.sft --table` rebuilds the committed section of bench/results.md from bench/sft.json
    (in a copy: the committed files are only read)."""
    (tmp_path / "sft.json").write_text((common.ROOT / "bench" / "sft.json").read_text())
    committed = (common.ROOT / "bench" / "results.md").read_text()
    (tmp_path / "results.md").write_text(committed)
    sft.main(["--table", "--out", str(tmp_path / "sft.json")])
    assert (tmp_path / "results.md").read_text() == committed


def test_sft(tiny_base: Path, tmp_path: Path) -> None:
    """bench.sft --quick on both examples, this pipeline's contenders (TRL's: test_sft_trl)."""
    results = sft_figures(tiny_base, tmp_path, ["packed", "padded", "padded_same_examples"])
    for r in results.values():
        positive(r, "packed_vs_padded", "packed_vs_padded_same_examples")
        assert "packed_vs_trl" not in r


@pytest.mark.slow  # TRL's SFTTrainer twice beside ours
@pytest.mark.skipif(importlib.util.find_spec("trl") is None,
                    reason="trl is not installed (uv sync)")
def test_sft_trl(tiny_base: Path, tmp_path: Path) -> None:
    results = sft_figures(tiny_base, tmp_path, ["packed", "trl_bfd", "trl_wrapped"])
    for r in results.values():
        assert r["faster_trl"] in ("trl_bfd", "trl_wrapped")
        positive(r, "packed_vs_trl")


def gguf_figures(tiny_base: Path, tmp_path: Path, *flags: str) -> dict:
    import datasets

    from finetune.config.export import GGUF_TYPES, LIBRARY_TYPES
    from finetune.models.loading import load_tokenizer

    ids = load_tokenizer(tiny_base)("The miller counted sacks by the mill race. " * 8)["input_ids"]
    datasets.Dataset.from_dict({"input_ids": [ids], "labels": [ids]}).save_to_disk(tmp_path / "test")
    out = tmp_path / "gguf.json"
    gguf.main(["--model", str(tiny_base), "--out", str(out), "--test", str(tmp_path / "test"), *flags])
    saved = json.loads(out.read_text())
    assert list(saved["types"]) == list(LIBRARY_TYPES if "--without-llama-cpp" in flags else GGUF_TYPES)
    positive(saved, "folder_test_perplexity")
    for t in saved["types"].values():
        positive(t, "test_perplexity")
    for t in saved["types"].values():
        positive(t, "bytes")
        assert t["transformers"]["tokenizer_agrees"]
    assert saved["types"]["f32"]["transformers"]["max_abs_logit_diff"] < 1e-3
    assert gguf.SECTION[0] in out.with_name("results.md").read_text()
    return saved


def test_gguf(tiny_base: Path, tmp_path: Path) -> None:
    """bench.gguf on the tiny model, read back by transformers (llama.cpp: test_gguf_llama_cpp)."""
    saved = gguf_figures(tiny_base, tmp_path, "--without-llama-cpp")
    assert all(t["llama_cpp"] is None for t in saved["types"].values())
    assert "not run" in gguf.table(saved, saved["model"])


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                    reason="llama-cpp-python is not installed (uv run --group llamacpp)")
def test_gguf_llama_cpp(tiny_base: Path, tmp_path: Path) -> None:
    saved = gguf_figures(tiny_base, tmp_path)
    for t in saved["types"].values():
        assert t["llama_cpp"]["tokenizer_agrees"]
        positive(t["llama_cpp"], "decode_tokens_per_second", "test_perplexity")


def servers_of(model: Path) -> list[psutil.Process]:
    """The processes whose command line names `model` (a serve left running)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if str(model) in " ".join(p.info["cmdline"] or []):
            found.append(p)
    return found


@pytest.mark.slow  # a server process, as tests/test_serve.py's
def test_serve(tiny_base: Path, tmp_path: Path) -> None:
    """bench.serve: the real server on a loopback port, streamed through the openai client, then
    stopped: no process of it is left."""
    out = tmp_path / "serve.json"
    serve.main(["--model", str(tiny_base), "--tokens", "4", "--runs", "1", "--levels", "1,2",
                "--out", str(out)])
    assert servers_of(tiny_base) == []
    saved = json.loads(out.read_text())
    positive(saved, "startup_seconds")
    for endpoint in ("chat", "completions"):
        assert saved[endpoint]["first_token_ms"] >= 0
        positive(saved[endpoint], "chunks")
    assert list(saved["concurrency"]) == ["1", "2"]
    for level in saved["concurrency"].values():
        positive(level, "tokens_per_second", "speedup")
        assert level["same_as_alone"] == level["requests"]  # greedy, batched or not
    assert "| clients |" in out.with_name("results.md").read_text()


@pytest.mark.slow  # five stage processes, each importing its libraries: ~20 s
def test_large_corpus(tmp_path: Path) -> None:
    """bench.large_corpus on a 1 MB corpus with a scratch model: every stage as a subprocess,
    its memory sampled."""
    out = tmp_path / "large_corpus.json"
    large_corpus.main(["--gb", "0.001", "--model-source", "scratch", "--num-proc", "1",
                       "--where", str(tmp_path), "--out", str(out)])
    saved = json.loads(out.read_text())
    assert list(saved["stages"]) == list(large_corpus.STAGES)
    for stage in saved["stages"].values():
        positive(stage, "seconds", "peak_resident_gb")
    positive(saved, "files", "passages", "tokens", "data_stage_seconds")
    assert "| tokenize |" in out.with_suffix(".md").read_text()


@pytest.mark.slow  # every step of the GPU check in its own process, a killed train process among them
def test_gpu_check_dry_run(tmp_path: Path) -> None:
    """`python -m bench.gpu --dry-run` runs every step of the GPU check on the CPU, seeing only
    the packages the device image has plus the wheels gpu_carry.sh carries."""
    out = tmp_path / "gpu.json"
    run = subprocess.run([sys.executable, "-m", "bench.gpu", "--dry-run", "--image", "--out", str(out)],
                         cwd=common.ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    steps = result["steps"]
    assert list(steps) == list(gpu.STEPS) and all(step["ok"] for step in steps.values()), steps
    assert steps["default"]["picks"] == {"precision": "fp32", "attention": "sdpa",
                                         "optimizer": "adamw_torch_fused", "tf32": None}
    assert set(steps["default"]["evaluate_seconds"]) == {"evaluate_base", "evaluate"}
    assert steps["default"]["perplexity"]["relative"] < 1e-6  # the same model, on the CPU twice
    assert steps["resume"]["resumed_from_step"] == 2 and steps["resume"]["steps_compared"] == 6
    for mode in ("pairs", "chat"):
        assert steps["packing"]["max_relative_difference"][mode]["cpu fp32"] < 1e-4
    settings = [(r["step"], r["setting"]) for r in result["runs"]]
    assert {("options", s) for s in ("compile", "eager", "batch 16", "batch 32")} <= set(settings)
    assert all(r["tokens_per_second"] > 0 and r["planned_gib"] > 0 for r in result["runs"])
    assert "ok" in steps["qlora"]  # trained, or one line when bitsandbytes is not installed
    assert "| default | auto | full |" in run.stdout and "6 of 6 steps ok" in run.stdout


def test_gpu_carry_takes_what_the_image_lacks() -> None:
    carried = {gpu.norm(r.split("==")[0]) for r in gpu.carry_requirements()}
    assert {"datasets", "pydantic", "dvclive", "dvc", "bitsandbytes", "transformers"} <= carried
    assert not carried & (gpu.image_packages() - gpu.NEWER)  # nothing the image has, but newer
    assert not carried & gpu.SKIP and "torch" not in carried
    from importlib.machinery import PathFinder

    finder = gpu.ImageOnly({"numpy"}, PathFinder)
    assert finder.find_spec("yaml") is None and finder.refused == {"PyYAML"}  # not in the image
    assert finder.find_spec("numpy") is not None and finder.find_spec("json") is not None


def test_redaction(tmp_path: Path) -> None:
    """bench.redaction: both labelled sets scored, span by span, and the speed figures on a few
    kB (the committed bench/redaction.json is only read)."""
    from bench import redaction
    from finetune.data.redaction import KINDS

    out = tmp_path / "redaction.json"
    redaction.main(["--mb", "0.01", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert list(saved["sets"]) == ["written_with_the_code", "held_out"]
    for scored in saved["sets"].values():
        assert scored["lines"] >= 70 and scored["negative_lines"] > 0
        assert list(scored["kinds"]) == [*KINDS, "all"]
        assert all(scored["kinds"][k]["labelled"] > 0 for k in KINDS)
    for figures in saved["speed"].values():
        positive(figures, "megabytes", "mb_s")
    assert saved["speed"]["chat"]["replaced"] > 0 and saved["speed"]["prose"]["replaced"] == 0
    assert "| all |" in out.with_suffix(".md").read_text()
    committed = json.loads((common.ROOT / "bench" / "redaction.json").read_text())
    assert committed["sets"] == saved["sets"]  # docs/data.md quotes these: they are this code's


def test_books(tmp_path: Path) -> None:
    """bench.books on a four-page book: each format written by its real writer, read back, the
    words in order (PDF only where Chromium is installed)."""
    from bench import books

    out = tmp_path / "books.json"
    books.main(["--pages", "4", "--repeats", "1", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert list(saved["formats"]) == list(books.FORMATS)
    for fmt, figures in saved["formats"].items():
        if fmt == "pdf" and books.chromium() is None:
            continue
        positive(figures, "seconds", "bytes", "words")
        assert figures["words_in_order"] >= 0.99 and figures["chapters"] == saved["chapters"]
    assert "| scriv |" in out.with_suffix(".md").read_text()
