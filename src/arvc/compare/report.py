"""The comparison's report: a table and three figures, as report.md (+ PNGs) and one self-contained HTML.

The HTML embeds its PNGs as base64 so it can be mailed or attached to an issue as a single file.
"""

from __future__ import annotations

import base64
import html
import json
import logging
from pathlib import Path

from arvc.train.logs import read_metrics

__all__ = ["COLUMNS", "FIGURES", "table_rows", "write_report"]

logger = logging.getLogger(__name__)

COLUMNS = (
    "optimizer",
    "final held-out mel L1",
    "best held-out mel L1",
    "final loss G",
    "final loss D",
    "wall time (s)",
    "optimizer share of step time",
    "state bytes/param",
    "NaN / skipped steps",
)
FIGURES = {
    "loss_curves.png": "Training losses (mel ×45, G, D) per step, trailing mean over 2 % of the run",
    "lr_schedule.png": "Learning rate each epoch",
    "mel_vs_time.png": "Held-out mel L1 against training wall time",
}


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def table_rows(results: dict[str, dict]) -> list[list[str]]:
    """One row per optimizer, in COLUMNS order; a failed run shows its error."""
    rows = []
    for name, r in results.items():
        if "error" in r:
            rows.append([name, f"failed: {r['error']}", *[""] * (len(COLUMNS) - 2)])
            continue
        share = r.get("optimizer_share")
        rows.append(
            [
                name,
                _fmt(r["final_heldout_mel_l1"]),
                _fmt(r["best_heldout_mel_l1"]),
                _fmt(r["final_losses"].get("loss_g")),
                _fmt(r["final_losses"].get("loss_d")),
                _fmt(r["wall_s"], 3),
                "–" if share is None else f"{100 * share:.1f} %",
                _fmt(r["state_bytes_per_param"], 3),
                f"{r['nonfinite_steps']} / {r['skipped_steps']}",
            ]
        )
    return rows


def _plot(out_dir: Path, results: dict[str, dict]) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = {name: r for name, r in results.items() if "error" not in r}
    paths = {}

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name in done:
        rows = read_metrics(out_dir / "runs" / name)
        steps = [int(row["step"]) for row in rows]
        for ax, key in zip(axes, ("loss_mel", "loss_g", "loss_d"), strict=True):
            ax.plot(steps, _smooth([float(row[key]) for row in rows]), label=name, linewidth=1)
    for ax, title in zip(axes, ("mel L1 ×45", "generator", "discriminator"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("step")
    axes[0].legend(fontsize="small")
    paths["loss_curves.png"] = _save(fig, out_dir / "loss_curves.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, r in done.items():
        recs = r["epoch_records"]
        ax.plot([x["epoch"] for x in recs], [x["lr"] for x in recs], marker="o", label=name)
    ax.set(xlabel="epoch", ylabel="learning rate (generator)", title="lr schedule followed")
    ax.legend(fontsize="small")
    paths["lr_schedule.png"] = _save(fig, out_dir / "lr_schedule.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, r in done.items():
        recs = r["epoch_records"]
        ax.plot([x["wall_s"] for x in recs], [x["heldout_mel_l1"] for x in recs], marker="o", label=name)
    ax.set(xlabel="training wall time (s)", ylabel="held-out mel L1", title="held-out mel L1 vs wall time")
    ax.legend(fontsize="small")
    paths["mel_vs_time.png"] = _save(fig, out_dir / "mel_vs_time.png")
    plt.close("all")
    return paths


def _smooth(values: list[float]) -> list[float]:
    """Trailing mean over ~2 % of the run, so long GAN-loss curves stay readable (short ones are raw).

    A convolution, not a running sum, so a NaN step blanks only its own window.
    """
    import numpy as np

    if not values:
        return []
    window = max(1, len(values) // 50)
    sums = np.convolve(np.asarray(values, dtype=float), np.ones(window))[: len(values)]
    return (sums / np.minimum(np.arange(1, len(values) + 1), window)).tolist()


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path


def _notes(out_dir: Path) -> list[str]:
    setup = out_dir / "compare.json"
    info = json.loads(setup.read_text()) if setup.is_file() else {}
    train = info.get("config", {}).get("train", {})
    return [
        f"Config `{info.get('config', {}).get('name', '?')}`, seed {train.get('seed')}, "
        f"batch {train.get('batch_size')}, {train.get('epochs')} epochs, precision {info.get('precision')} "
        "(the AnyPrecisionAdamW-bf16-* variants always run in bf16).",
        "Held-out mel L1: plain L1 of log-mel spectrograms (not ×45) between held-out recordings never seen "
        "in training and the generator's conversion of them (eval mode, fixed seed).",
        "Optimizer share: time inside `optimizer.step` (G and D) over the time of the training steps. "
        "Wall time excludes evaluation. State bytes/param: measured from the optimizers' buffers at the end.",
        "NaN / skipped: steps with a non-finite loss / updates skipped as non-finite (metrics.csv).",
        "Denormal floats are flushed to zero during a comparison (on CPU they slow RAdam's first steps "
        "~100x, an artefact of the machine, not of the optimizer).",
    ]


def write_report(out_dir: Path, results: dict[str, dict]) -> tuple[Path, Path]:
    """Write report.md, report.html and the PNGs into `out_dir`; returns (md, html) paths."""
    out_dir = Path(out_dir)
    figures = _plot(out_dir, results)
    rows = table_rows(results)
    notes = _notes(out_dir)

    md = ["# arvc compare", ""]
    md += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    md += ["| " + " | ".join(row) + " |" for row in rows]
    md += ["", *[f"- {note}" for note in notes], ""]
    for file, title in FIGURES.items():
        md += [f"## {title}", "", f"![{title}]({file})", ""]
    md_path = out_dir / "report.md"
    md_path.write_text("\n".join(md))

    cells = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>\n" for row in rows)
    images = "".join(
        f"<h2>{html.escape(title)}</h2>\n<img alt='{html.escape(title)}' src='data:image/png;base64,"
        f"{base64.b64encode(figures[file].read_bytes()).decode()}'>\n"
        for file, title in FIGURES.items()
    )
    notes_html = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    page = (
        "<!doctype html>\n<html><head><meta charset='utf-8'><title>arvc compare</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{max-width:100%}"
        f"</style></head><body><h1>arvc compare</h1>\n<table><tr>{cells}</tr>\n{body}</table>\n"
        f"<ul>{notes_html}</ul>\n{images}</body></html>\n"
    )
    html_path = out_dir / "report.html"
    html_path.write_text(page)
    logger.info("report: %s, %s", md_path, html_path)
    return md_path, html_path
