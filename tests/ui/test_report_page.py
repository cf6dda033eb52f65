"""The compare report as the web UI's Compare tab shows it: figure links the page cannot load point to the
Figures gallery, which shows each figure under the report's title for it."""

import pytest

from arvc.compare.report import FIGURES

pytest.importorskip("gradio", reason="the UI needs the ui extra (pip install 'arvc[ui]')")
from arvc.ui.app import report_figures, report_for_page  # noqa: E402

REPORT = """# Optimizer comparison

| optimizer | final |
|---|---|
| AdamW | 0.91 |

## Learning rate each epoch

![Learning rate each epoch](lr_schedule.png)

## Held-out mel L1

![Held-out mel L1 against training wall time; line: mean over seeds, band: min–max](mel_vs_time.png)
"""


def test_figure_links_point_to_the_gallery_and_the_rest_is_kept():
    page = report_for_page(REPORT)
    assert "![" not in page and "](" not in page
    assert page.count("*Shown in Figures below.*") == 2
    kept = [line for line in REPORT.splitlines() if not line.startswith("![")]
    assert [line for line in page.splitlines() if "Figures below" not in line] == kept


def test_the_gallery_shows_each_figure_under_its_report_title(tmp_path):
    for name in ("mel_vs_time.png", "lr_schedule.png", "extra.png"):
        (tmp_path / name).write_bytes(b"\x89PNG")
    (tmp_path / "report.md").write_text(REPORT)
    assert report_figures(tmp_path) == [
        (str(tmp_path / "extra.png"), "extra"),
        (str(tmp_path / "lr_schedule.png"), FIGURES["lr_schedule.png"]),
        (str(tmp_path / "mel_vs_time.png"), FIGURES["mel_vs_time.png"]),
    ]
