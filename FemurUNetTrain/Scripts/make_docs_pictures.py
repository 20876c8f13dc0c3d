"""Pictures of real results for the extension page and README (Docs/): the demo's phantom CT segmented by the shipped
demo model, as the QC picture `femurunet segment --qc` writes, and the training curve of the demo model's last run
(from its shipped epoch log).

usage: python FemurUNetTrain/Scripts/make_docs_pictures.py [OUTDIR]   (default Docs/; ~1 minute on 2 CPU cores)
"""
import sys
from pathlib import Path

from FemurUNetLib import segment_volume
from FemurUNetLib.evaluate import dice
from FemurUNetLib.paths import DEFAULT_MODEL_PATH
from FemurUNetLib.phantom2 import generate_case
from FemurUNetLib.qc import write_qc
from FemurUNetTrainLib.history import plot_curve, read_log_records

DEMO_SEED = 9000      # the phantom `femurunet demo` segments (never used in training)


def main(outdir: Path) -> None:
    case = generate_case(DEMO_SEED, coverage="pelvis")
    result = segment_volume(case.ct, case.geometry, device="cpu")
    score = dice(result.labelmap > 0, case.label > 0)
    title = f"phantom v2 pelvis {DEMO_SEED} (synthetic CT), demo model v3: Dice {score:.3f} against the phantom's truth"
    print(write_qc(outdir / "femurunet_qc_phantom.png", case.ct, result.labelmap, case.geometry, title))
    log = DEFAULT_MODEL_PATH.with_name(DEFAULT_MODEL_PATH.stem + ".log.jsonl")     # the shipped run's epoch log
    print(plot_curve(read_log_records(log), outdir / "demo_model_training_curve.png"))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "Docs")
