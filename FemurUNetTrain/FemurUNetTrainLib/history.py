"""A training run's files besides the model: their names, the epoch log (JSON lines), the curve PNG, and the
collapse check on the history. Torch-free: the Slicer module and the background-process poller read them too."""
from __future__ import annotations

import json
from pathlib import Path

from FemurUNetLib.fileio import atomic_write


def _stem(out) -> Path:
    out = Path(out)
    return out.with_suffix("") if out.suffix == ".pt" else out


def checkpoint_path(out) -> Path:
    return _stem(out).with_name(_stem(out).name + ".checkpoint.pt")


def log_path(out) -> Path:
    return _stem(out).with_name(_stem(out).name + ".log.jsonl")


def curve_path(out) -> Path:
    return _stem(out).with_name(_stem(out).name + ".curve.png")


def write_log(path: Path, history: list) -> None:
    text = "".join(json.dumps(r) + "\n" for r in history)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def append_log(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def plot_curve(history: list, path) -> Path:
    """Loss (train, val) and validation Dice per epoch, as a PNG."""
    fig = curve_figure(history)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"), ".png")


def curve_figure(history: list):
    """The matplotlib Figure of ``plot_curve``; the log-scale loss axis reads plain numbers (0.985, not 9.85x10^-1)."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.add_subplot(111)
    epochs = [r["epoch"] for r in history]
    ax.plot(epochs, [r["loss"] for r in history], label="loss (train)", color="tab:blue")
    if any(r.get("val_loss") is not None for r in history):
        ax.plot(epochs, [r.get("val_loss") for r in history], label="loss (val)", color="tab:orange")
    ax.set_xlabel("epoch")
    ax.set_ylabel("1 - Dice")
    ax.set_yscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:.3g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if any(r.get("val_dice") is not None for r in history):
        ax2 = ax.twinx()
        ax2.plot(epochs, [r.get("val_dice") for r in history], label="Dice (val)", color="tab:green")
        ax2.set_ylabel("validation Dice")
        ax2.set_ylim(0, 1)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="center right")
    fig.tight_layout()
    return fig


def read_log_records(path) -> list:
    """Every complete JSON line of a JSONL log (a line still being written, or a bad line, is skipped)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    records = []
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n"):
            break
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


COLLAPSE_EPOCHS, COLLAPSE_DICE = 3, 0.01


def collapsed(history: list) -> bool:
    """Learned (training Dice > 0.5), then empty output for COLLAPSE_EPOCHS epochs: sigmoid saturated, dead ReLUs.

    Seen with Adam at lr 1e-3 (no normalisation layers in the seed's U-Net); nothing brings such a net back.
    """
    if len(history) <= COLLAPSE_EPOCHS:
        return False
    learned = max(r["dice"] for r in history[:-COLLAPSE_EPOCHS]) > 0.5
    return learned and all(r["dice"] < COLLAPSE_DICE for r in history[-COLLAPSE_EPOCHS:])
