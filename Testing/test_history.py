"""FemurUNetTrainLib.history: the training curve a user reads, and the CLI's summary line."""
import pytest

from FemurUNetTrainLib.history import curve_figure, plot_curve


def tick_texts(fig):
    fig.canvas.draw()
    ax = fig.axes[0]
    return [t.get_text() for t in ax.get_yticklabels(which="both") if t.get_text()]


def test_loss_axis_reads_plain_numbers_over_a_narrow_range(tmp_path):
    history = [{"epoch": e, "loss": 0.99 - 0.001 * e, "val_loss": 0.991 - 0.001 * e, "val_dice": 0.5} for e in range(1, 6)]
    texts = tick_texts(curve_figure(history))
    assert texts and all("10^" not in t and "times" not in t and "$" not in t for t in texts), texts
    assert {"0.985", "0.99"} <= set(texts) and all(float(t) > 0 for t in texts)    # plain decimals
    path = plot_curve(history, tmp_path / "curve.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("epochs, words", [(1, "1 epoch in"), (2, "2 epochs in")])
def test_summary_line_counts_epochs_in_english(tmp_path, capsys, epochs, words):
    from FemurUNetLib.phantom import generate_case
    from FemurUNetTrainLib.cli import main
    from FemurUNetTrainLib.export import export_arrays
    case = generate_case(4, shape=(12, 48, 48))
    export_arrays(case.ct, case.label, case.geometry, tmp_path / "data", "p4", empty_fraction=0.0)
    code = main(["train", str(tmp_path / "data"), "--out", str(tmp_path / "m.pt"), "--epochs", str(epochs),
                 "--steps-per-epoch", "1", "--batch-size", "2", "--base-filters", "2", "--input-size", "32",
                 "--threads", "1", "--quiet"])
    assert code == 0 and capsys.readouterr().out.startswith(f"done: {words} ")


