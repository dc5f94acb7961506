"""reports/report.html in a real browser: headless Chromium loads it without errors and shows the
comparison table, the forgetting check, the error analysis, the ratings and both plots. The
screenshot is kept in .ci-artifacts/ (git-ignored). Skipped where Chromium is not installed
(.ci/run installs Debian's `chromium`)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from finetune.config.schema import Params
from finetune.files import write_json
from finetune.paths import Paths
from finetune.report.ratings import summarise
from stages import report
from tests.helpers import ROOT, evaluate_models, run_stage, write_metrics

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))),
                None)
pytestmark = [pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium: apt-get install chromium"),
              pytest.mark.slow]  # a real browser
ARTIFACTS = ROOT / ".ci-artifacts"
PLOT_BLUE = (31, 119, 180)  # matplotlib's first line colour: the train loss curve


def chromium(page: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--no-first-run", "--disable-extensions", "--enable-logging=stderr", "--v=0",
               "--virtual-time-budget=5000", *flags, page.as_uri()]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


def console_errors(log: str) -> list[str]:
    """What the page itself reported: console messages, uncaught errors, failed loads."""
    return [line for line in log.splitlines()
            if re.search(r"CONSOLE|Uncaught|Failed to load|net::ERR_", line)]


@pytest.fixture
def rendered(trained: tuple[Params, Paths]) -> Path:
    params, paths = trained
    write_metrics("eval", evaluate_models(params, paths), paths)
    samples = json.loads((paths.metrics / "samples.json").read_text())
    ratings = [{"prompt": samples[0]["prompt"], "a": "base", "choice": "B", "preferred": "finetuned"}]
    write_json(summarise(samples, ratings), paths.human_eval)  # as `uv run rate` writes it
    run_stage(report, params, paths)
    return paths.reports / "report.html"


def test_report_loads_in_chromium_and_shows_the_table_and_the_plot(rendered: Path) -> None:
    dom = chromium(rendered, "--dump-dom")
    assert console_errors(dom.stderr) == []
    html = dom.stdout
    table = re.search(r"<h2>Base vs fine-tuned.*?</h2>\s*<table>(.*?)</table>", html, re.S)
    assert table, "the comparison table is missing"
    assert "<td>base</td>" in table.group(1) and "<td>finetuned</td>" in table.group(1)
    assert re.search(r'<img alt="loss curves" src="data:image/png;base64,', html)
    assert "Parameters of this run" in html and "Sample generations" in html
    assert "Blind A/B rating" in html and "Fine-tuned preferred 1 times" in html
    cost = re.search(r"<h2>Gain on your data, cost on general text</h2>\s*<table>(.*?)</table>",
                     html, re.S)
    assert cost and "<td>your test data</td>" in cost.group(1) and "general English" in cost.group(1)
    per_title = re.search(r"<h3>Per title</h3>\s*<table>(.*?)</table>", html, re.S)
    assert per_title and "<td>The Mill</td>" in per_title.group(1)
    assert re.search(r"<h3>Largest gain</h3>\s*<table>.*?The miller counted sacks", html, re.S)
    assert re.search(r'<img alt="test perplexity per source, base and fine-tuned" '
                     r'src="data:image/png;base64,', html)

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "report.png"
    screenshot.unlink(missing_ok=True)
    shot = chromium(rendered, f"--screenshot={screenshot}", "--window-size=1280,4800")
    assert console_errors(shot.stderr) == []
    image = Image.open(screenshot).convert("RGB")
    assert image.size == (1280, 4800)
    colours = image.getcolors(maxcolors=1 << 20) or []
    plot_pixels = sum(n for n, rgb in colours
                      if all(abs(a - b) <= 12 for a, b in zip(rgb, PLOT_BLUE, strict=True)))
    assert plot_pixels > 200, "the loss plot was not drawn"
    assert len(colours) > 50, "the page rendered blank"


def test_the_chat_report_shows_each_group_in_chromium(trained_chat: tuple[Params, Paths]) -> None:
    """Chat mode with ingest.group_field: the per-group table with BLEU and ROUGE-L, and the
    conversations with the largest gain."""
    params, paths = trained_chat
    write_metrics("eval", evaluate_models(params, paths), paths)
    run_stage(report, params, paths)
    dom = chromium(paths.reports / "report.html", "--dump-dom")
    assert console_errors(dom.stderr) == []
    table = re.search(r"<h3>Per group</h3>\s*<table>(.*?)</table>", dom.stdout, re.S)
    assert table and "<th>fine-tuned bleu</th>" in table.group(1), dom.stdout
    assert "<td>orders</td>" in table.group(1) and "<td>returns</td>" in table.group(1)
    assert re.search(r"<h3>Largest gain</h3>\s*<table>.*?user: Where is my order", dom.stdout, re.S)


def test_a_broken_page_is_caught(tmp_path: Path) -> None:
    """The checks above can fail: a page with a script error and a missing image trips them."""
    page = tmp_path / "broken.html"
    page.write_text('<html><body><img src="missing.png"><script>nope()</script></body></html>')
    assert console_errors(chromium(page, "--dump-dom").stderr)
