"""Write reports/report.md and reports/report.html (self-contained) with reports/loss.png and
reports/sources.png: base vs fine-tuned on the test split and the reference text, the error
analysis, the training and data summaries, the samples, the blind ratings of `uv run rate`, and
the params each stage ran with (from the metrics they wrote). Params: `report`."""

from __future__ import annotations

from typing import Any

from finetune.config.report import ReportParams
from finetune.files import atomic_output, read_json
from finetune.paths import PATHS, Paths
from finetune.report.content import (
    PLOT,
    SOURCES_PLOT,
    blocks,
    loss_curves,
    plot_losses,
    plot_sources,
    read_metrics,
    to_html,
    to_markdown,
)
from finetune.report.ratings import NO_RATINGS
from finetune.stage import stage_main


def run(report: ReportParams, paths: Paths = PATHS) -> dict[str, Any]:
    metrics, ran_with = read_metrics(paths)
    samples_path = paths.metrics / "samples.json"
    samples = read_json(samples_path) if samples_path.exists() else []
    human = read_json(paths.human_eval) if paths.human_eval.exists() else NO_RATINGS
    analysis = read_json(paths.analysis) if paths.analysis.exists() else {}
    sampling = read_json(paths.inference_file).get("sampling") if paths.inference_file.exists() else None
    curves = loss_curves(paths.train_log)
    # Its files, not the folder: reports/ also holds what `uv run tune` writes (reports/tune).
    with atomic_output(paths.reports / PLOT) as tmp:
        plot_losses(curves, tmp)
    with atomic_output(paths.reports / SOURCES_PLOT) as tmp:
        plot_sources(analysis, tmp)
    content = blocks(report.title, ran_with, metrics, samples, PLOT, human, analysis, SOURCES_PLOT,
                     sampling)
    with atomic_output(paths.reports / "report.md") as tmp:
        tmp.write_text(to_markdown(content), encoding="utf-8")
    with atomic_output(paths.reports / "report.html") as tmp:  # last: it embeds the plot
        tmp.write_text(to_html(content, paths.reports), encoding="utf-8")
    return {"report": str(paths.reports / "report.html"), "plots": len(curves)}


def main(argv: list[str] | None = None) -> None:
    stage_main("report", run, argv, write_metrics=False)


if __name__ == "__main__":
    main()
