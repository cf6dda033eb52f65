"""Bar chart of step time relative to torch's fused AdamW, one bar per model size for each optimizer."""

from __future__ import annotations

from pathlib import Path

__all__ = ["plot_ratios", "save_figure"]


def plot_ratios(result: dict, path: Path) -> Path:
    """Write a PNG (matplotlib's Agg backend: no display needed); the x axis is logarithmic."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r["status"] == "ok" and r.get("ratio_to_baseline")]
    sizes = list(dict.fromkeys(r["size"] for r in rows))
    labels = list(dict.fromkeys(r["label"] for r in rows))
    ratio = {(r["label"], r["size"]): r["ratio_to_baseline"] for r in rows}
    height = 0.8 / max(len(sizes), 1)

    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.45 * len(labels) * max(1, len(sizes) / 2)))
    for index, size in enumerate(sizes):
        ys = [i + (index - (len(sizes) - 1) / 2) * height for i in range(len(labels))]
        values = [ratio.get((label, size), 0.0) for label in labels]
        ax.barh(ys, values, height=height, label=f"{size} params")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.axvline(1.3, color="tab:red", linestyle="--", linewidth=0.8, label="1.3× target")
    ax.set_xscale("log")
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("median step time / torch fused AdamW (same run, same size; lower is faster)")
    machine = result["machine"]
    where = f"{machine['device']}: {machine['cpu_model']}, {machine['torch_threads']} threads"
    ax.set_title(f"optimizer.step() on {where}", fontsize=9)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(axis="x", which="both", alpha=0.3)
    return save_figure(fig, path, dpi=110)


def save_figure(fig, path: Path, dpi: int) -> Path:
    """Lay out `fig`, write it to `path` (its folder made if missing), close it; returns the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
