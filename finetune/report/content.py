"""The report's content (blocks of headings, paragraphs, tables and images), its charts, and its
rendering as Markdown and as self-contained HTML."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path
from typing import Any

import pandas as pd

from finetune.errors import UserError
from finetune.files import read_json
from finetune.paths import Paths
from finetune.report import charts
from finetune.report.ratings import NO_RATINGS, current
from finetune.scoring.scores import MIN_TOKENS

Block = tuple[str, Any]  # ("h2", text) | ("p", text) | ("table", rows) | ("img", path) | ("pre", text)


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) or "none"
    return "n/a" if value is None else str(value)


PLOT = "loss.png"


SOURCES_PLOT = "sources.png"


ALT = {PLOT: "loss curves", SOURCES_PLOT: "test perplexity per source, base and fine-tuned"}


CHART_ROWS = 20   # sources in the chart: those with most test tokens


TABLE_ROWS = 30   # and in each table (eval_analysis.json has them all)


TEXT_CHARS = 400  # of a passage shown in the report (eval_analysis.json has all of it)


def loss_curves(log_dir: Path) -> dict[str, pd.DataFrame]:
    """The DVCLive histories of train and eval loss (step, value)."""
    curves = {}
    for name in ("train/loss", "eval/loss"):
        tsv = log_dir / "plots" / "metrics" / f"{name}.tsv"
        if tsv.exists():
            curves[name] = pd.read_csv(tsv, sep="\t")
    return curves


def plot_losses(curves: dict[str, pd.DataFrame], out: Path) -> None:
    fig, ax = charts.pyplot().subplots(figsize=(7, 4), dpi=100)
    for name, df in curves.items():
        ax.plot(df["step"], df[df.columns[-1]], marker="o", markersize=3, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Training and validation loss")
    ax.grid(alpha=0.3)
    if curves:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no losses logged", ha="center", va="center", transform=ax.transAxes)
    charts.save(fig, out)


def plot_sources(analysis: dict[str, Any], out: Path) -> None:
    """Horizontal bars: each source's test perplexity, base and fine-tuned."""
    import numpy as np

    rows = analysis["tables"][analysis["by"]][:CHART_ROWS] if analysis else []
    fig, ax = charts.pyplot().subplots(figsize=(7, 1.2 + 0.45 * max(len(rows), 1)), dpi=100)
    names = [_short(r["name"], 40) for r in rows][::-1]
    at = np.arange(len(rows))
    bars = ((0.2, "base_perplexity", "base"), (-0.2, "finetuned_perplexity", "fine-tuned"))
    for offset, key, label in bars:
        ax.barh(at + offset, [r[key] or 0 for r in rows][::-1], height=0.38, label=label)
    ax.set_yticks(at, names)
    ax.set_xlabel(f"test perplexity per {analysis['by'] if analysis else 'source'} "
                  "(lower is better)")
    ax.grid(axis="x", alpha=0.3)
    if rows:  # above the bars, where it hides none of them
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    else:
        ax.text(0.5, 0.5, "no test passages scored", ha="center", va="center",
                transform=ax.transAxes)
    charts.save(fig, out)


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _rise(change: float | None) -> str:
    """A relative change of perplexity as a person reads it: -39.0% is lower (better)."""
    return "n/a" if change is None else f"{change:+.1%}"


def _change(improvement: float | None) -> str:
    """An improvement (above 0: lower perplexity) as a change: 0.39 is -39.0%."""
    return _rise(None if improvement is None else -improvement)


def general_line(ref: dict[str, Any] | None) -> str:
    if not ref:
        return ""
    return (f" On general English: {_fmt(ref['base']['perplexity'])} → "
            f"{_fmt(ref['finetuned']['perplexity'])} ({_rise(ref['change'])}).")


def cost_blocks(ev: dict[str, Any]) -> list[Block]:
    """Gain on the user's data next to the change on general English (the forgetting check)."""
    rows = [["text", "base perplexity", "fine-tuned perplexity", "change"],
            ["your test data", _fmt(ev["base"]["perplexity"]), _fmt(ev["finetuned"]["perplexity"]),
             _change(ev.get("perplexity_improvement"))]]
    ref = ev.get("reference")
    if not ref:
        return [("h2", "Gain on your data, cost on general text"), ("table", rows),
                ("p", "No reference text was scored (`evaluate.reference_paths: []`), so what "
                      "fine-tuning cost on general English is not measured.")]
    rows.append([f"general English ({ref['words']:,} words)", _fmt(ref["base"]["perplexity"]),
                 _fmt(ref["finetuned"]["perplexity"]), _rise(ref["change"])])
    change = ref["change"] or 0
    verdict = ("the fine-tuned model finds general English harder than the base model did: "
               "it has forgotten some of it" if change > 0 else
               "the fine-tuned model predicts general English better than the base model too: "
               "nothing forgotten that this text shows" if change < 0 else
               "the fine-tuned model does no worse on general English than the base model")
    return [("h2", "Gain on your data, cost on general text"), ("table", rows),
            ("p", f"The reference is general English prose that is not yours "
                  f"(`evaluate.reference_paths`, {ref['tokens']:,} tokens, the same tokens for "
                  f"both models). A negative change is a gain; here {verdict}.")]


def analysis_blocks(analysis: dict[str, Any], plot: str) -> list[Block]:
    """Where fine-tuning helped and where it hurt: per source and per group, and the passages
    with the largest gain and the largest loss."""
    if not analysis:
        return []
    out: list[Block] = [("h2", "Where it helped and where it hurt (test split)")]
    for by, table in analysis["tables"].items():
        extra = [k for k in ("base_bleu", "finetuned_bleu", "base_rougeL", "finetuned_rougeL")
                 if any(k in row for row in table)]
        out += [("h3", f"Per {by}"), ("table", [
            [by, "examples", "tokens", "base perplexity", "fine-tuned perplexity", "change",
             *(k.replace("finetuned", "fine-tuned").replace("_", " ") for k in extra)],
            *[[row["name"], _fmt(row["examples"]), _fmt(row["tokens"]),
               _fmt(row["base_perplexity"]), _fmt(row["finetuned_perplexity"]),
               _change(row["improvement"]), *(_fmt(row.get(k)) for k in extra)]
              for row in table[:TABLE_ROWS]]])]
        if len(table) > TABLE_ROWS:
            out.append(("p", f"The {TABLE_ROWS} with most test tokens of {len(table):,}; "
                             "metrics/eval_analysis.json has them all."))
    if plot:
        out.append(("img", plot))
    for key, title in (("largest_gain", "Largest gain"),
                       ("largest_loss", "Largest loss (or least gain)")):
        if analysis[key]:
            out += [("h3", title), ("table", [
                [analysis["by"], "base perplexity", "fine-tuned perplexity", "change", "text"],
                *[[row["source"], _fmt(row["base_perplexity"]), _fmt(row["finetuned_perplexity"]),
                   _change(row["improvement"]), _short(row["text"], TEXT_CHARS)]
                  for row in analysis[key]]])]
    out.append(("p", "Perplexity of each test passage or example on its own tokens, as both "
                     f"models scored them; passages of fewer than {MIN_TOKENS} tokens are ranked "
                     "only when too few are longer. metrics/eval_analysis.json has the full texts."))
    return out


def model_table(ev: dict[str, Any]) -> list[list[str]]:
    rows = [["model", "test loss", "test perplexity"]]
    extra = [k for k in ("bleu", "rougeL") if k in ev["base"]]
    rows[0] += extra
    for name in ("base", "finetuned"):
        m = ev[name]
        rows.append([name, _fmt(m["loss"]), _fmt(m["perplexity"]), *(_fmt(m[k]) for k in extra)])
    return rows


def export_blocks(export: dict[str, Any]) -> list[Block]:
    """What each GGUF file cost: the test split's perplexity of each, beside the fine-tuned
    folder's, as transformers dequantises it and as llama.cpp runs it (where it was installed)."""
    folder = export["finetuned_test"]["perplexity"]
    rows = [["file", "size", "test perplexity", "change", "in llama.cpp", "greedy tokens as the folder's"]]
    for t in export["types"].values():
        ppl = t["test"]["perplexity"]
        llama = t.get("llama_cpp_test", {}).get("perplexity")
        rows.append([f"{Path(t['file']).name}", f"{t['bytes'] / 2**20:,.1f} MiB", f"{ppl:,.3f}",
                     f"{ppl / folder - 1:+.2%}" if ppl and folder else "n/a",
                     f"{llama:,.3f}" if llama is not None else "not run",
                     f"{t['check']['greedy_agreement']:.0%}"])
    lora = export.get("lora_adapter")
    return [("h2", "What each exported file costs (test split)"),
            ("p", f"The fine-tuned model's test perplexity is {folder:,.3f} "
                  f"({export['finetuned_test']['tokens']:,} tokens); each GGUF file on the same tokens:"),
            ("table", rows)] + ([("p", f"LoRA adapter: {Path(lora['file']).name} "
                                      f"({lora['bytes'] / 2**20:,.1f} MiB, rank {lora['rank']}) over "
                                      f"{Path(lora['base_file']).name}.")] if lora else [])


def blocks(title: str, run: dict[str, Any], metrics: dict[str, Any], samples: list[dict[str, str]],
           plot: str, human: dict[str, Any] = NO_RATINGS, analysis: dict[str, Any] | None = None,
           sources_plot: str = "", sampling: dict[str, Any] | None = None) -> list[Block]:
    """The report's content, independent of the output format: `run` holds the params the
    stages ran with (run_params), `sampling` the settings the samples were drawn with."""
    ev, tr = metrics["eval"], metrics["train"]
    source = run.get("model", {}).get("source") or metrics.get("base_model", {}).get("source", "?")
    improvement = ev.get("perplexity_improvement")
    out: list[Block] = [("h1", title), ("p", (
        f"Base model `{source}` fine-tuned in {run.get('mode', '?')} mode on "
        f"{tr['env']['device']} ({tr['env']['precision']}). Test perplexity "
        f"{_fmt(ev['base']['perplexity'])} → {_fmt(ev['finetuned']['perplexity'])}"
        + (f" ({improvement:.1%} lower)." if improvement is not None else ".")
        + general_line(ev.get("reference"))))]
    out += [("h2", "Base vs fine-tuned (test split)"), ("table", model_table(ev)),
            ("p", f"Both models scored on the same {ev['test_tokens']:,} test tokens.")]
    out += cost_blocks(ev)
    if "export" in metrics:
        out += export_blocks(metrics["export"])
    out += analysis_blocks(analysis or {}, sources_plot)
    out += [("h2", "Training"), ("table", [["", "value"], *[[k, _fmt(v)] for k, v in tr.items()]])]
    if plot:
        out.append(("img", plot))
    out.append(("h2", "Data"))
    for stage in ("ingest", "clean", "split", "tokenize", "base_model"):
        if stage in metrics:
            figures = {k: v for k, v in metrics[stage].items() if k not in NOT_READ}
            out += [("h3", stage), ("table", [["", "value"], *[[k, _fmt(v)] for k, v in figures.items()]])]
    out += not_read_blocks(metrics.get("ingest", {}))
    if samples:
        out += sample_blocks(samples, ev, run.get("seed"), sampling or {})
    out += rating_blocks(human, samples)
    out += [("h2", "Parameters of this run"), ("table", [["key", "value"], *param_rows(run)])]
    return out


NOT_READ = ("skipped_files", "ignored", "not_read")  # ingest's files left out, by name


def not_read_blocks(ingest: dict[str, Any]) -> list[Block]:
    """Each file ingest left out (skipped as bad, or of a type it does not read), and why."""
    left_out = [*ingest.get("skipped_files", []), *ingest.get("ignored", [])]
    if not left_out:
        return []
    return [("h3", "Files not read"), ("p", "Nothing of these reached the model."),
            ("table", [["file", "why"], *[[f["file"], f["reason"]] for f in left_out]])]


def sample_blocks(samples: list[dict[str, str]], ev: dict[str, Any], seed: int | None,
                  sampling: dict[str, Any]) -> list[Block]:
    """The samples side by side: greedy, and sampled as `generate` samples by default; and how
    repetitive each model's samples are."""
    def table(suffix: str) -> Block:
        return ("table", [["prompt", "base", "fine-tuned"], *[
            [s["prompt"], s.get(f"base{suffix}") or "(empty)", s.get(f"finetuned{suffix}") or "(empty)"]
            for s in samples]])

    out: list[Block] = [("h2", "Sample generations (greedy, side by side)"), table("")]
    if "base_sampled" in samples[0]:
        settings = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sampling.items() if k != "do_sample")
        out += [("h2", "Sample generations as `generate` samples them"),
                ("p", f"Sampled with {settings} and seed {seed}: what a user of the model gets."),
                table("_sampled")]
    if "repetition" in ev["base"]:
        rep = {name: f"{_fmt(ev[name]['repetition'])} greedy, {_fmt(ev[name]['repetition_sampled'])} "
                     "sampled" for name in ("base", "finetuned")}
        out.append(("p", f"Repeated word 3-grams in these samples (0: none, near 1: a model stuck "
                         f"in a loop, which perplexity does not show): base {rep['base']}; "
                         f"fine-tuned {rep['finetuned']}."))
    return out


def rating_blocks(human: dict[str, Any], samples: list[dict[str, str]]) -> list[Block]:
    """The blind A/B ratings of `uv run rate`, when they judged these very samples."""
    if not samples:
        return []
    out: list[Block] = [("h2", "Blind A/B rating (uv run rate)")]
    if not human.get("ratings"):
        return out + [("p", "Not rated yet: `uv run rate` shows each prompt's two outputs blind, "
                            "in a random order, and records which one you prefer.")]
    if not current(human, samples):
        return out + [("p", "The ratings in metrics/human_eval.json judged other samples (an "
                            "earlier model), so they are not shown; rate these with `uv run rate`.")]
    wins, losses, ties = human["finetuned_wins"], human["base_wins"], human["ties"]
    text = (f"Fine-tuned preferred {wins} times, base {losses}, ties {ties}, skipped "
            f"{human['skipped']}.")
    if human["win_rate"] is not None:
        lo, hi = human["win_rate_ci95"]
        text += (f" Win rate of the fine-tuned model {human['win_rate']:.0%} (95 % interval "
                 f"{lo:.0%}–{hi:.0%}).")
    return out + [("p", text), ("table", [["prompt", "preferred"], *[
        [r["prompt"], r["preferred"] or "skipped"] for r in human["ratings"]]])]


def param_rows(run: dict[str, Any]) -> list[list[str]]:
    """Every params.yaml key the run's stages read, dotted (train.lora.r), with its value."""
    def flat(value: Any, prefix: str) -> list[list[str]]:
        if isinstance(value, dict):
            return [row for k, v in value.items() for row in flat(v, f"{prefix}{k}.")]
        return [[prefix.rstrip("."), value if isinstance(value, str) else json.dumps(value)]]

    return flat(run, "")


def to_markdown(content: list[Block]) -> str:
    lines: list[str] = []
    for kind, value in content:
        if kind in ("h1", "h2", "h3"):
            lines += ["#" * int(kind[1]) + " " + value, ""]
        elif kind == "p":
            lines += [value, ""]
        elif kind == "pre":
            lines += ["> " + line for line in (value or "(empty)").splitlines()] + [""]
        elif kind == "img":
            lines += [f"![{ALT[value]}]({value})", ""]
        elif kind == "table":
            # a cell stays on its row: pipes escaped, line breaks as <br> (GitHub's tables)
            cells = [[c.replace("|", "\\|").replace("\n", "<br>") for c in row] for row in value]
            lines += ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(cells[0])]
            lines += ["| " + " | ".join(row) + " |" for row in cells[1:]] + [""]
    return "\n".join(lines)


def to_html(content: list[Block], images: Path) -> str:
    """A self-contained page: the plot is embedded as a data URI."""
    parts = []
    for kind, value in content:
        if kind in ("h1", "h2", "h3"):
            parts.append(f"<{kind}>{html.escape(value)}</{kind}>")
        elif kind == "p":
            text = re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(value).replace("**", ""))
            parts.append(f"<p>{text}</p>")
        elif kind == "pre":
            parts.append(f"<pre>{html.escape(value or '(empty)')}</pre>")
        elif kind == "img":
            data = base64.b64encode((images / value).read_bytes()).decode()
            parts.append(f'<img alt="{html.escape(ALT[value])}" src="data:image/png;base64,{data}">')
        elif kind == "table":
            head = "".join(f"<th>{html.escape(c)}</th>" for c in value[0])
            body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                           for row in value[1:])
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    style = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
             "table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;"
             "padding:.25rem .6rem;text-align:left;vertical-align:top;white-space:pre-wrap}"
             "pre{white-space:pre-wrap;background:#f6f6f6;"
             "padding:.6rem}img{max-width:100%}")
    title = html.escape(next(v for k, v in content if k == "h1"))
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}"
            f"</title><style>{style}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


PARAMS_ORDER = ("seed", "mode", "model", "ingest", "clean", "split", "tokenize", "train", "evaluate",
                "report")


def read_metrics(paths: Paths) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each stage's summary, and the params the stages ran with, as each recorded them in its
    summary (the base model's scoring for evaluate's): the report shows the run its figures came
    from, not whatever params.yaml says now."""
    metrics, run = {}, {}
    for name in ("ingest", "clean", "split", "tokenize", "base_model", "export"):
        path = paths.metrics / f"{name}.json"
        if path.exists():
            metrics[name] = read_json(path)
    for name in ("train", "eval"):  # the whole summaries, not only their headline figures
        path = paths.details_file(name)
        if not path.exists():
            raise UserError(f"{path}: missing; run the pipeline first")
        metrics[name] = read_json(path)
    if paths.eval_base.exists():
        run |= read_json(paths.eval_base).get("params", {})
    for summary in metrics.values():
        for key, value in summary.pop("params", {}).items():
            section, _, leaf = key.partition(".")
            if leaf:  # one key of a section (tokenize reads ingest.on_error)
                run.setdefault(section, {}).setdefault(leaf, value)
            elif isinstance(value, dict):
                run[key] = {**run.get(key, {}), **value}
            else:
                run[key] = value
    order = {key: i for i, key in enumerate(PARAMS_ORDER)}
    return metrics, dict(sorted(run.items(), key=lambda item: order.get(item[0], len(order))))
