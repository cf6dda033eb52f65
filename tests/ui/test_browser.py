"""`arvc ui` in a real browser: Debian's chromium, headless, driven by Playwright (nothing downloaded).

Open the page, find every registry optimizer, start a tiny training, watch its progress and plot update,
stop it, then convert a recording with the checkpoint it saved and find the audio player. Then a run
that ends (seen from a new tab after the first closed): its best epoch and held-out players; the Models
tab (inspect, export, build the index, a path outside refused) and the Compare tab (a ranked report with
figures).
"""

import hashlib
import re
import shutil
import socket
import time
from pathlib import Path

import pytest

from arvc.data.demo import generate_demo_voice
from arvc.optim import OPTIMIZERS

pytest.importorskip("gradio", reason="the UI needs the ui extra (pip install 'arvc[ui]')")
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (dev extra)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (apt-get install chromium)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path, monkeypatch):
    from arvc.ui.app import build_app
    from arvc.ui.jobs import Jobs

    root = tmp_path / "root"
    generate_demo_voice(root / "voice", seconds=24, sr=16000, seed=3)
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(root / ".arvc-ui" / "uploads"))
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    jobs = Jobs()
    app = build_app(root, jobs)
    port = _free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
               allowed_paths=[str(root)])  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}", root, jobs
    finally:
        jobs.stop()
        jobs.wait(120)
        app.close()


def _open(browser, url: str):
    """A new tab on the page, with a minute for each wait unless a step says otherwise."""
    page = browser.new_page()
    page.set_default_timeout(60_000)
    page.goto(url)
    return page


def _digest(png: bytes) -> str:  # compared as digests: pytest's diff of two large byte strings takes ages
    return hashlib.sha256(png).hexdigest()


def _step_of(text: str) -> int:
    match = re.search(r"step (\d+)/(\d+)", text)
    return int(match[1]) if match else -1


def test_train_watch_stop_and_convert_in_a_browser(server):
    url, root, jobs = server
    expect = playwright.expect
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = _open(browser, url)

        table = page.locator("#optimizers")
        for name in OPTIMIZERS:  # the schedule-free ones too: the table is the registry's
            expect(table.get_by_role("gridcell", name=name, exact=True).first).to_be_attached()

        page.locator("#dataset textarea, #dataset input").first.fill("voice")
        page.locator("#run-name textarea, #run-name input").first.fill("alice")
        page.locator("#epochs input").first.fill("50")
        page.locator("#batch input").first.fill("2")
        page.locator("#start").click()

        status = page.locator("#status")
        expect(status).to_contain_text("training", timeout=120_000)
        expect(status).to_contain_text("step", timeout=120_000)
        plot = page.locator("#plot")
        expect(plot.locator("canvas, svg, img").first).to_be_visible()  # a matplotlib figure: an img
        first, before = _step_of(status.inner_text()), _digest(plot.screenshot())
        deadline = time.time() + 120
        while _step_of(status.inner_text()) < first + 3 and time.time() < deadline:
            time.sleep(0.5)  # the page updates itself: no reload
        assert _step_of(status.inner_text()) >= first + 3, status.inner_text()
        expect(status).to_contain_text("ETA")
        expect(page.locator("#log textarea")).to_have_value(
            re.compile("optimizer AdamW: lr=0.001")
        )  # the CLI's log
        time.sleep(1.5)  # one more tick of the page's timer
        assert _digest(plot.screenshot()) != before, "the loss plot did not change while training"

        page.locator("#stop").click()
        expect(status).to_contain_text("stopped", timeout=120_000)
        checkpoints = sorted((root / "runs" / "alice" / "checkpoints").glob("ckpt_*.pt"))
        assert checkpoints, "Stop saved a checkpoint"

        page.get_by_role("tab", name="Convert").click()
        model = page.locator("#model input").first
        model.fill(str(checkpoints[-1].relative_to(root)))
        model.press("Enter")
        source = next((root / "voice").glob("*.wav"))
        page.locator("#source input[type=file]").set_input_files(str(source))
        expect(
            page.locator(
                "#source audio, #source .waveform-container, #source [data-testid='waveform-x']"
            ).first
        ).to_be_attached()
        page.locator("#convert").click()
        expect(page.locator("#converted audio").first).to_be_attached(timeout=120_000)
        download = page.locator("#converted a[download], #converted [aria-label*='ownload']").first
        expect(download).to_be_attached()  # the player's download link
        converted = list((root / "converted").glob("*.wav"))
        assert len(converted) == 1 and converted[0].stat().st_size > 1000
        browser.close()
    assert Path(converted[0]).resolve().is_relative_to(root.resolve())


def test_a_finished_run_its_players_models_and_compare_tabs_in_a_browser(server):
    """A run that ends: the held-out players fill in; the Models tab inspects and exports it; the
    Compare tab runs a one-contestant comparison and shows its report and figures."""
    url, root, jobs = server
    expect = playwright.expect
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = _open(browser, url)

        page.locator("#dataset textarea, #dataset input").first.fill("voice")
        page.locator("#run-name textarea, #run-name input").first.fill("bob")
        page.locator("#epochs input").first.fill("1")
        page.locator("#batch input").first.fill("4")
        page.locator("#start").click()
        expect(page.locator("#status")).to_contain_text("bob: ", timeout=120_000)
        page.close()  # closing the tab does not stop the run; a new page shows it
        page = _open(browser, url)
        status = page.locator("#status")
        expect(status).to_contain_text("bob: ")
        expect(status).to_contain_text("finished", timeout=180_000)
        expect(status).to_contain_text(re.compile(r"best held-out mel L1 \d\.\d+ at epoch 1"))
        run = root / "runs" / "bob"
        assert (run / "export" / "model.safetensors").is_file()
        # the players: the held-out original and its conversion at the last epoch, with their names
        expect(page.locator("#original audio").first).to_be_attached()
        expect(page.locator("#sample audio").first).to_be_attached()
        expect(page.locator("#sample")).to_contain_text("converted at epoch 1")
        piece = sorted((run / "samples" / "epoch_0001").glob("*.wav"))[0].stem
        expect(page.locator("#original")).to_contain_text(piece)

        page.get_by_role("tab", name="Models").click()
        path = page.locator("#m-path textarea, #m-path input").first
        path.fill("runs/bob/export/model.safetensors")
        page.locator("#inspect").click()
        result = page.locator("#m-out")
        expect(result).to_contain_text("sample_rate")
        expect(result).to_contain_text("16000")
        (run / "export" / "model.safetensors").unlink()  # export again from the checkpoint
        path.fill("runs/bob")
        page.locator("#export").click()
        expect(result).to_contain_text("ckpt_")
        assert (run / "export" / "model.safetensors").is_file()
        page.locator("#index").click()
        expect(result).to_contain_text("added")
        assert (run / "export" / "added.index").is_file()
        path.fill("../outside")
        page.locator("#inspect").click()
        expect(page.get_by_text("outside the server's folder").first).to_be_visible()

        page.get_by_role("tab", name="Compare").click()
        page.locator("#c-dataset textarea, #c-dataset input").first.fill("voice")
        page.locator("#c-name textarea, #c-name input").first.fill("mine")
        page.locator("#c-optimizers textarea, #c-optimizers input").first.fill("AdamW")
        page.locator("#c-seeds input").first.fill("1")
        page.locator("#c-epochs input").first.fill("1")
        page.locator("#c-batch input").first.fill("4")  # 24 s of audio: 7 training pieces
        page.locator("#c-start").click()
        expect(page.locator("#c-status")).to_contain_text("finished", timeout=300_000)
        ranked = re.compile(r"AdamW: \d\.\d+ \(")  # the ranking's line: its seed finished
        expect(page.locator("#c-report")).to_contain_text(ranked)
        expect(page.locator("#c-report")).not_to_contain_text("failed")
        expect(page.locator("#c-report")).to_contain_text("Shown in Figures below")
        expect(page.locator("#c-report img")).to_have_count(0)  # no figure link the page cannot load
        expect(page.locator("#c-figures img").first).to_be_attached()
        browser.close()
    report = root / "compare" / "mine" / "report.md"
    assert report.is_file() and "1. AdamW" in report.read_text()
    assert (root / "compare" / "mine" / "runs" / "AdamW" / "seed-1234" / "result.json").is_file()
