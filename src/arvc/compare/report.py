"""The comparison's report: the ranking table, the held-out scores' and the stopped-early tables, and the
figures, as report.md (+ PNGs) and one self-contained HTML.

The HTML embeds its PNGs as base64 so it can be mailed or attached to an issue as a single file.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
from pathlib import Path

from arvc.audio.score import BETTER
from arvc.audio.score import COLUMNS as SCORE_COLUMNS
from arvc.data.outputs import COMPARE_SETUP
from arvc.optim import OPTIMIZERS
from arvc.train.logs import read_metrics

__all__ = [
    "COLUMNS",
    "FIGURES",
    "MIN_RANKING_STEPS",
    "REPORT_FILE",
    "TIE_RULE",
    "SCORES_HEADING",
    "EARLY_FRACTION",
    "collect_results",
    "early_stop_table",
    "ranking",
    "score_table",
    "short_run_warning",
    "short_runs",
    "spread",
    "summarize",
    "table_rows",
    "ties",
    "write_report",
]

logger = logging.getLogger(__name__)

REPORT_FILE = "report.md"  # the comparison's report, beside its figures (and report.html)
COLUMNS = (
    "optimizer",
    "schedule",
    "seeds",
    "final held-out mel L1: mean (min–max)",
    "best held-out mel L1: mean (min–max)",
    "ties with (final)",
    "final loss G",
    "final loss D",
    "wall time (s)",
    "optimizer share of step time",
    "state bytes/param",
    "NaN / skipped steps",
)
FIGURES = {
    "loss_curves.png": "Training losses (mel ×45, G, D) per step, trailing mean over 2 % of the run; "
    "line: mean over seeds, band: min–max",
    "lr_schedule.png": "Learning rate each epoch",
    "mel_vs_time.png": "Held-out mel L1 against training wall time; line: mean over seeds, band: min–max",
    "scores.png": "Held-out scores (docs/scoring.md) at each epoch that computed them; line: mean over "
    "seeds, band: min–max",
}
TIE_RULE = (
    "Two contestants tie when the min–max ranges over seeds of their final held-out mel L1 overlap "
    "(a ≤ d and c ≤ b for ranges [a, b] and [c, d]): the difference of their means is then no larger than "
    "what changing the seed alone does."
)


# Where the "stopped early" view cuts each run: schedule-free's promise is a good result whenever training
# stops, and a user who stops a scheduled run early gets its weights before the schedule has finished.
EARLY_FRACTION = 1 / 3
EARLY_HEADING = "Stopped early: held-out mel L1 at a third of the run (what a user who stops there gets):"

# The shortest run a ranking means something at: the demo's default comparison (60 epochs x 5 steps), the
# shortest in which every paired schedule takes its shape (docs/compare.md); 25-step runs ranked schedules
# and noise.
MIN_RANKING_STEPS = 300


def _pairings() -> str:
    """The registry's scheduler pairings, e.g. "AdaBelief cosine, AdaBeliefV2 inverse_sqrt", read off it."""
    return ", ".join(f"{s.name} {s.paired_scheduler}" for s in OPTIMIZERS.values() if s.paired_scheduler)


SCORES_HEADING = (
    "Held-out scores at the last evaluation (docs/scoring.md; docs/compare.md says what the demo voice can "
    "tell), mean (min–max) over seeds; ties as for mel L1, per score:"
)


def short_run_warning(steps: int) -> str:
    """What a ranking of runs of `steps` (< MIN_RANKING_STEPS) steps is worth, said once for the CLI and
    the report."""
    return (
        f"runs of {steps} steps, fewer than the {MIN_RANKING_STEPS} a ranking needs: the order is a quick "
        "look, not a verdict (short GAN runs rank their first steps and the schedules' start); use more "
        "--epochs so that every run has a few hundred steps (docs/compare.md)"
    )


def short_runs(results: dict[str, dict]) -> int | None:
    """The fewest steps of a finished run when that is below MIN_RANKING_STEPS; None when every run is long
    enough (or none finished)."""
    steps = [r["steps"] for runs in finished_runs(results).values() for r in runs if "steps" in r]
    return min(steps) if steps and min(steps) < MIN_RANKING_STEPS else None


def spread(values: list[float]) -> tuple[float, float, float]:
    """(mean, min, max) of per-seed values; the table's "mean (min–max)"."""
    if not values:
        raise ValueError("spread of no values")
    return sum(values) / len(values), min(values), max(values)


def summarize(entry: dict) -> dict:
    """One contestant's seeds → what its table row shows; {"error": ...} when any seed failed.

    A contestant with a failed seed is not ranked: its remaining seeds would not be like for like.
    """
    runs = entry["runs"]
    failed = [r for r in runs if "error" in r]
    if failed:
        return {"name": entry["name"], "error": f"{failed[0]['error']} (seed {failed[0]['seed']})"}
    if not runs:
        return {"name": entry["name"], "error": "no finished seed (the comparison was stopped)"}

    def mean(key):
        values = [r[key] for r in runs if r.get(key) is not None]
        return sum(values) / len(values) if values else None

    def loss(key):
        values = [r["final_losses"][key] for r in runs if key in r["final_losses"]]
        return sum(values) / len(values) if values else None

    return {
        "name": entry["name"],
        "schedule": entry.get("schedule") or runs[0].get("schedule"),
        "seeds": [r["seed"] for r in runs],
        "final": spread([r["final_heldout_mel_l1"] for r in runs]),
        "best": spread([r["best_heldout_mel_l1"] for r in runs]),
        "scores": _final_scores(runs),
        "loss_g": loss("loss_g"),
        "loss_d": loss("loss_d"),
        "wall_s": mean("wall_s"),
        "optimizer_share": mean("optimizer_share"),
        "state_bytes_per_param": mean("state_bytes_per_param"),
        "nonfinite_steps": sum(r["nonfinite_steps"] for r in runs),
        "skipped_steps": sum(r["skipped_steps"] for r in runs),
    }


def _final_scores(runs: list[dict]) -> dict[str, tuple[float, float, float]]:
    """score → spread over seeds of its final held-out value, for the scores every seed has a finite one of
    (runs written before the scores, or a score with nothing to measure, leave it out)."""
    out = {}
    for key, _, _ in SCORE_COLUMNS:
        values = [r.get("final_heldout_scores", {}).get(key) for r in runs]
        if all(v is not None and math.isfinite(v) for v in values):
            out[key] = spread(values)
    return out


def _score_summaries(summaries: dict[str, dict], key: str) -> dict[str, dict]:
    """The ranked contestants' spreads of one held-out score, as `ties` and `ranking` take them."""
    return {n: {"final": s["scores"][key]} for n, s in summaries.items() if key in s.get("scores", {})}


def ties(summaries: dict[str, dict], key: str = "final") -> dict[str, list[str]]:
    """name → the other ranked contestants it ties with (see TIE_RULE), in the summaries' order."""
    ranked = {n: s[key] for n, s in summaries.items() if "error" not in s}
    return {
        name: [o for o, (_, lo2, hi2) in ranked.items() if o != name and lo <= hi2 and lo2 <= hi]
        for name, (_, lo, hi) in ranked.items()
    }


def ranking(summaries: dict[str, dict], metric: str = "mel_l1") -> list[str]:
    """The ranked contestants, best (lowest mean final held-out mel L1; for another `metric`, the best
    by arvc.config.BETTER) first, each with its ties."""
    tied = ties(summaries)
    sign = -1 if BETTER[metric] == "higher" else 1
    ranked = sorted((sign * s["final"][0], n) for n, s in summaries.items() if "error" not in s)
    lines = []
    for place, (_, name) in enumerate(ranked, 1):
        mean, lo, hi = summaries[name]["final"]
        with_ = f"ties with {', '.join(tied[name])}" if tied[name] else "no tie"
        lines.append(f"{place}. {name}: {mean:.4g} ({lo:.4g}–{hi:.4g}), {with_}")
    return lines


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _range(triple) -> str:
    mean, lo, hi = triple
    return f"{mean:.4g} ({lo:.4g}–{hi:.4g})"


def table_rows(results: dict[str, dict]) -> list[list[str]]:
    """One row per contestant, in COLUMNS order; a failed one shows its error."""
    summaries = {name: summarize(entry) for name, entry in results.items()}
    tied = ties(summaries)
    rows = []
    for name, s in summaries.items():
        if "error" in s:
            rows.append([name, f"failed: {s['error']}", *[""] * (len(COLUMNS) - 2)])
            continue
        share = s["optimizer_share"]
        rows.append(
            [
                name,
                _fmt(s["schedule"]),
                str(len(s["seeds"])),
                _range(s["final"]),
                _range(s["best"]),
                ", ".join(tied[name]) or "none",
                _fmt(s["loss_g"]),
                _fmt(s["loss_d"]),
                _fmt(s["wall_s"], 3),
                "–" if share is None else f"{100 * share:.1f} %",
                _fmt(s["state_bytes_per_param"], 3),
                f"{s['nonfinite_steps']} / {s['skipped_steps']}",
            ]
        )
    return rows


def score_table(results: dict[str, dict]) -> tuple[list[str], list[list[str]], list[str]]:
    """(header, rows, rankings) of the final held-out scores: one row per ranked contestant, "mean
    (min–max)" over seeds and the contestants it ties with (TIE_RULE, per score); one ranking line per
    score. Empty when no contestant has a score (runs written before the scores)."""
    summaries = {n: s for n, s in ((n, summarize(e)) for n, e in results.items()) if "error" not in s}
    keys = [c for c in SCORE_COLUMNS if any(c[0] in s["scores"] for s in summaries.values())]
    if not keys:
        return [], [], []
    header = ["optimizer", *(f"{title} ({BETTER[key]} is better)" for key, title, _ in keys)]
    tied = {key: ties(_score_summaries(summaries, key)) for key, _, _ in keys}
    rows = []
    for name, s in summaries.items():
        cells = []
        for key, _, _ in keys:
            if key not in s["scores"]:
                cells.append("–")
                continue
            with_ = tied[key][name]
            cells.append(_range(s["scores"][key]) + (f"; ties {', '.join(with_)}" if with_ else ""))
        rows.append([name, *cells])
    rankings = []
    for key, title, _ in keys:
        order = ranking(_score_summaries(summaries, key), key)
        rankings.append(
            f"{title} ({BETTER[key]} is better): " + "; ".join(line.split(". ", 1)[1] for line in order)
        )
    return header, rows, rankings


def _early_run(run: dict) -> tuple[int, float, float] | None:
    """(cut epoch, held-out mel L1 at it, best until it) of one run's epoch records; None for a run
    written before result.json kept its records, or one that never reached the cut."""
    records = run.get("epoch_records") or []
    epochs = run.get("epochs")
    if not records or not epochs:
        return None
    cut = max(1, round(epochs * EARLY_FRACTION))
    until = [r for r in records if r["epoch"] <= cut]
    if not until or until[-1]["epoch"] != cut:
        return None
    return cut, until[-1]["heldout_mel_l1"], min(r["heldout_mel_l1"] for r in until)


def early_stop_table(results: dict[str, dict]) -> tuple[int | None, list[list[str]], list[str]]:
    """(cut epoch, rows, ranking) of the stopped-early view: per ranked contestant the held-out mel L1 at
    EARLY_FRACTION of the run and the best until then, mean (min–max) over seeds, ties on the value at the
    cut (TIE_RULE); ranked by it. No rows when no contestant has every seed's records up to the cut."""
    early, cuts = {}, set()
    for name, runs in finished_runs(results).items():
        points = [_early_run(r) for r in runs]
        if not points or any(p is None for p in points):
            continue
        cuts.update(p[0] for p in points)
        early[name] = {"final": spread([p[1] for p in points]), "best": spread([p[2] for p in points])}
    if not early or len(cuts) != 1:  # contestants cut at different epochs are not like for like
        return None, [], []
    tied = ties(early)
    rows = [
        [name, _range(e["final"]), _range(e["best"]), ", ".join(tied[name]) or "none"]
        for name, e in early.items()
    ]
    order = [line.split(". ", 1)[1] for line in ranking(early)]
    return cuts.pop(), rows, order


def collect_results(out_dir: Path, names: list[str] | None = None) -> dict[str, dict]:
    """The finished runs under out_dir/runs (NAME/seed-K/result.json), in run_compare's results shape;
    for a report while a comparison is still running, or of one that was stopped."""
    out_dir = Path(out_dir)
    names = names or sorted(p.name for p in (out_dir / "runs").iterdir() if p.is_dir())
    results = {}
    for name in names:
        runs = [
            json.loads(path.read_text())
            for path in sorted((out_dir / "runs" / name).glob("seed-*/result.json"), key=_seed_of)
        ]
        schedule = runs[0].get("schedule") if runs else None
        results[name] = {"name": name, "schedule": schedule, "runs": runs}
    return results


def _seed_of(path: Path) -> int:
    return int(path.parent.name.removeprefix("seed-"))


def _band(curves: list[list[float]]):
    """Mean, min and max over seeds, point by point, over the length all curves share."""
    import numpy as np

    n = min(len(c) for c in curves)
    stack = np.asarray([c[:n] for c in curves], dtype=float)
    return stack.mean(axis=0), stack.min(axis=0), stack.max(axis=0)


def finished_runs(results: dict[str, dict]) -> dict[str, list[dict]]:
    """name → runs, for the contestants with finished seeds and none failed: those that are ranked."""
    return {
        name: entry["runs"]
        for name, entry in results.items()
        if entry["runs"] and not any("error" in r for r in entry["runs"])
    }


def _plot(out_dir: Path, results: dict[str, dict], losses: dict[str, list[list[dict]]]) -> dict[str, Path]:
    """The report's figures (file name → path); `losses`: each contestant's per-step losses, as
    `_loss_tables` reads them (the training-loss figure draws those it has)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = finished_runs(results)
    paths = {}
    if not done:  # nothing to draw: no figures rather than three empty ones
        return paths
    style = line_styles(list(done))

    if losses:
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        for name, tables in losses.items():
            steps = [int(row["step"]) for row in tables[0]]
            for ax, key in zip(axes, ("loss_mel", "loss_g", "loss_d"), strict=True):
                mean, lo, hi = _band([_smooth([float(row[key]) for row in rows]) for rows in tables])
                n = min(len(steps), len(mean))
                ax.plot(steps[:n], mean[:n], label=name, linewidth=1, **style[name])
                ax.fill_between(steps[:n], lo[:n], hi[:n], color=style[name]["color"], alpha=0.2, linewidth=0)
        for ax, title in zip(axes, ("mel L1 ×45", "generator", "discriminator"), strict=True):
            ax.set_title(title)
            ax.set_xlabel("step")
        axes[0].legend(fontsize="small")
        paths["loss_curves.png"] = _save(fig, out_dir / "loss_curves.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, runs in done.items():
        recs = runs[0]["epoch_records"]  # the schedule does not depend on the seed
        ax.plot([x["epoch"] for x in recs], [x["lr"] for x in recs], marker=".", label=name, **style[name])
    ax.set(xlabel="epoch", ylabel="learning rate (generator)", title="lr schedule followed")
    _plain_lr_axes(ax)
    ax.legend(fontsize="small")
    paths["lr_schedule.png"] = _save(fig, out_dir / "lr_schedule.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, runs in done.items():
        wall, _, _ = _band([[x["wall_s"] for x in r["epoch_records"]] for r in runs])
        mean, lo, hi = _band([[x["heldout_mel_l1"] for x in r["epoch_records"]] for r in runs])
        ax.plot(wall, mean, marker=".", label=name, **style[name])
        ax.fill_between(wall, lo, hi, color=style[name]["color"], alpha=0.2, linewidth=0)
    ax.set(
        xlabel="training wall time (s), mean over seeds",
        ylabel="held-out mel L1",
        title="held-out mel L1 vs wall time",
    )
    ax.legend(fontsize="small")
    paths["mel_vs_time.png"] = _save(fig, out_dir / "mel_vs_time.png")
    scores = _plot_scores(plt, out_dir, done, style)
    if scores is not None:
        paths["scores.png"] = scores
    plt.close("all")
    return paths


def _loss_tables(out_dir: Path, done: dict[str, list[dict]]) -> tuple[dict[str, list[list[dict]]], list[str]]:
    """(name → every seed's metrics.csv rows, for the contestants whose every finished run has them; the
    runs without them, as "NAME seed K"): a folder of gathered results may lack some."""
    tables, missing = {}, []
    for name, runs in done.items():
        rows = [read_metrics(out_dir / "runs" / name / f"seed-{r['seed']}") for r in runs]
        missing += [f"{name} seed {r['seed']}" for r, table in zip(runs, rows, strict=True) if not table]
        if all(rows):
            tables[name] = rows
    return tables, missing


def line_styles(names: list[str]) -> dict[str, dict]:
    """name → its matplotlib colour and line style, the same in every figure of a report (a contestant
    left out of one figure does not shift the others' colours): tab10's colours, then dashed, dotted, …
    beyond ten contestants, so that no two share a line."""
    import matplotlib

    colors = matplotlib.colormaps["tab10"].colors
    dashes = ("-", "--", ":", "-.")
    return {
        name: {"color": colors[i % len(colors)], "linestyle": dashes[i // len(colors) % len(dashes)]}
        for i, name in enumerate(names)
    }


def _plot_scores(plt, out_dir: Path, done: dict[str, list[dict]], style: dict[str, dict]) -> Path | None:
    """One small plot per held-out score: per contestant, its mean over seeds (band: min–max) at the epochs
    every seed computed it (PESQ/STOI: every few evaluations); None when no run has a score."""
    import numpy as np

    curves: dict[str, dict[str, tuple[list[int], list[list[float]]]]] = {}
    for key, _, _ in SCORE_COLUMNS:
        for name, runs in done.items():
            by_seed = [
                {x["epoch"]: x.get("heldout_scores", {}).get(key) for x in r["epoch_records"]} for r in runs
            ]
            epochs = [
                e
                for e in sorted(by_seed[0])
                if all(s.get(e) is not None and math.isfinite(s[e]) for s in by_seed)
            ]
            if epochs:
                curves.setdefault(key, {})[name] = (epochs, [[s[e] for e in epochs] for s in by_seed])
    if not curves:
        return None
    fig, axes = plt.subplots(1, len(curves), figsize=(3.2 * len(curves), 3.2), squeeze=False)
    titles = {key: title for key, title, _ in SCORE_COLUMNS}
    for ax, (key, lines) in zip(axes[0], curves.items(), strict=True):
        for name, (epochs, values) in lines.items():
            stack = np.asarray(values, dtype=float)
            ax.plot(epochs, stack.mean(axis=0), marker=".", label=name, **style[name])
            low, high = stack.min(axis=0), stack.max(axis=0)
            ax.fill_between(epochs, low, high, color=style[name]["color"], alpha=0.2)
        ax.set(xlabel="epoch", title=f"{titles[key]}, {BETTER[key]} is better")
        ax.title.set_fontsize("small")
    axes[0][0].legend(fontsize="small")
    return _save(fig, out_dir / "scores.png")


def _plain_lr_axes(ax) -> None:
    """Plain lr values on the y axis (matplotlib's default wrote 0.999875-scale steps as ticks under a
    `1e-7+1e-3` offset) and whole epochs on the x axis (not 1.5, 2.5)."""
    from matplotlib.ticker import MaxNLocator

    ax.ticklabel_format(axis="y", style="plain", useOffset=False)  # as many digits as the ticks need
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


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


def _notes(out_dir: Path, results: dict[str, dict], no_losses: list[str]) -> list[str]:
    setup = out_dir / COMPARE_SETUP
    info = json.loads(setup.read_text()) if setup.is_file() else {}
    train = info.get("config", {}).get("train", {})
    seeds = info.get("seeds") or [train.get("seed")]
    warmup = train.get("warmup_epochs")
    schedule = info.get("schedule", "?")
    done = [len(e["runs"]) for e in results.values()]
    notes = [
        f"Config `{info.get('config', {}).get('name', '?')}`, batch {train.get('batch_size')}, "
        f"{train.get('epochs')} epochs, precision {info.get('precision')} "
        "(the AnyPrecisionAdamW-bf16-* variants always run in bf16).",
        f"Seeds {', '.join(map(str, seeds))} for every contestant (same seed: same initial weights and batch "
        "order); one held-out split for the whole comparison (made with the first seed), the same pieces "
        "for every seed and contestant. Mean (min–max): over the seeds each contestant finished.",
        f"Schedule: {schedule}"
        + (
            f" (each optimizer with its registry pairing: {_pairings()}, the others RVC's exponential)"
            if schedule == "paired"
            else " (every contestant on this one schedule)"
        )
        + f"; inverse_sqrt warm-up: {warmup if warmup else 'default, a tenth of the run (1–10)'} epochs.",
        TIE_RULE,
        "Held-out mel L1: plain L1 of log-mel spectrograms (not ×45) between held-out recordings never seen "
        "in training and the generator's conversion of them (eval mode, fixed seed).",
        "Optimizer share: time inside `optimizer.step` (G and D) over the time of the training steps. "
        "Wall time excludes evaluation. State bytes/param: measured from the optimizers' buffers at the end.",
        "NaN / skipped: steps with a non-finite loss / updates skipped as non-finite (metrics.csv), summed "
        "over seeds.",
        "Denormal floats are flushed to zero during a comparison (on CPU they slow RAdam's first steps "
        "~100x, an artefact of the machine, not of the optimizer).",
    ]
    if len(seeds) == 1:
        notes.append("One seed: no spread, so ties mean equal values only; the order may be noise.")
    if done and min(done) < len(seeds):
        notes.append(f"Incomplete: some contestants finished fewer than {len(seeds)} seeds (column 'seeds').")
    if no_losses:
        notes.append(
            "Left out of the training-loss figure (their metrics.csv is not in this folder), with the other "
            f"seeds of their contestant: {', '.join(no_losses)}."
        )
    notes += [f"Warning: {w}." for w in info.get("warnings", [])]
    return notes


def _md_table(header, rows) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def _html_table(header, rows) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>\n" for row in rows)
    return f"<table><tr>{head}</tr>\n{body}</table>\n"


def write_report(out_dir: Path, results: dict[str, dict]) -> tuple[Path, Path]:
    """Write report.md, report.html and the PNGs into `out_dir`; returns (md, html) paths."""
    out_dir = Path(out_dir)
    losses, no_losses = _loss_tables(out_dir, finished_runs(results))
    figures = _plot(out_dir, results, losses)
    rows = table_rows(results)
    notes = _notes(out_dir, results, no_losses)
    if not figures:
        notes.append("No figures: no contestant finished a seed.")
    ranked = ranking({name: summarize(entry) for name, entry in results.items()})
    heading = "Ranked by mean final held-out mel L1 (lower is better):"
    short = short_runs(results)
    if short is not None:
        notes.insert(0, f"Warning: {short_run_warning(short)}.")
        heading = (
            f"Ranked by mean final held-out mel L1 (lower is better) — PRELIMINARY, runs of {short} steps:"
        )

    md = ["# arvc compare", ""]
    if short is not None:
        md += [f"**Preliminary: {short_run_warning(short)}.**", ""]
    md += _md_table(COLUMNS, rows)
    md += ["", heading, ""]
    md += [*ranked, ""]
    score_header, score_rows, score_ranks = score_table(results)
    if score_rows:
        md += [SCORES_HEADING, ""]
        md += _md_table(score_header, score_rows)
        md += ["", *[f"- {line}" for line in score_ranks], ""]
    cut, early_rows, early_order = early_stop_table(results)
    early_header = [
        "optimizer",
        f"held-out mel L1 at epoch {cut}: mean (min–max)",
        f"best until epoch {cut}: mean (min–max)",
        f"ties with (at epoch {cut})",
    ]
    early_ranking = "Ranked by the value at the cut (lower is better): " + "; ".join(early_order)
    if early_rows:
        md += [EARLY_HEADING, ""]
        md += _md_table(early_header, early_rows)
        md += ["", early_ranking, ""]
    md += [*[f"- {note}" for note in notes], ""]
    for file, title in FIGURES.items():
        if file not in figures:
            continue
        md += [f"## {title}", "", f"![{title}]({file})", ""]
    md_path = out_dir / REPORT_FILE
    md_path.write_text("\n".join(md))

    images = "".join(
        f"<h2>{html.escape(title)}</h2>\n<img alt='{html.escape(title)}' src='data:image/png;base64,"
        f"{base64.b64encode(figures[file].read_bytes()).decode()}'>\n"
        for file, title in FIGURES.items()
        if file in figures
    )
    scores_html = ""
    if score_rows:
        scores_html = (
            f"<p>{html.escape(SCORES_HEADING)}</p>\n"
            + _html_table(score_header, score_rows)
            + "<ul>"
            + "".join(f"<li>{html.escape(line)}</li>" for line in score_ranks)
            + "</ul>\n"
        )
    early_html = ""
    if early_rows:
        early_html = (
            f"<p>{html.escape(EARLY_HEADING)}</p>\n"
            + _html_table(early_header, early_rows)
            + f"<p>{html.escape(early_ranking)}</p>\n"
        )
    ranked_html = "".join(f"<li>{html.escape(line.split('. ', 1)[1])}</li>" for line in ranked)
    notes_html = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    banner = (
        f"<p><strong>Preliminary: {html.escape(short_run_warning(short))}.</strong></p>\n" if short else ""
    )
    page = (
        "<!doctype html>\n<html><head><meta charset='utf-8'><title>arvc compare</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{max-width:100%}"
        f"</style></head><body><h1>arvc compare</h1>\n{banner}{_html_table(COLUMNS, rows)}"
        f"<p>{html.escape(heading)}</p>\n<ol>{ranked_html}</ol>\n{scores_html}{early_html}"
        f"<ul>{notes_html}</ul>\n{images}</body></html>\n"
    )
    html_path = out_dir / "report.html"
    html_path.write_text(page)
    logger.info("report: %s, %s", md_path, html_path)
    return md_path, html_path
