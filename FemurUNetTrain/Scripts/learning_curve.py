"""Learning curve: held-out Dice vs labelled training cases, fine-tuned from the demo model vs trained from scratch.

usage: python FemurUNetTrain/Scripts/learning_curve.py OUTDIR [--counts 1,2,4,8,16] [--held-out 20] [--minutes 2]
       [--arms finetune,scratch,scratch_finetune_recipe] [--quick]

Every case (training and held-out) comes from phantom v2 with one fixed protocol outside what the demo model was
trained on: pelvis scans with 3 x 3 mm in-plane voxels (its training drew 0.5-2.6 mm) and 5 mm slices,
reconstructed low-dose with a sharp kernel (noise 80 HU; its training drew 4-60 HU); see SETTING. Training case n
is seed TRAIN_SEED + n (the n-case set is the first n), held-out case i is seed TEST_SEED + i. For each count every
arm gets the same CPU time: the seconds per training step of
each arm are measured once (CALIBRATION steps), and each run gets ``--minutes`` of steps (epochs of equal
length; ``--steps`` fixes the count instead). Arms (ARMS): ``femurunet train --recipe finetune --init DEMO``; from
scratch with the seed recipe (``femurunet train``, same width and input size); from scratch with the finetune
recipe's settings (the same run as the first without its start). Each model is scored like
evaluate_demo_model.py (its ``case_row``/``phantom_summary``). Writes OUTDIR/learning_curve.json (after every run)
and OUTDIR/learning_curve.png; work files in OUTDIR/work. A run already in the JSON is skipped on a rerun.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evaluate_demo_model import case_row, phantom_summary  # noqa: E402  (the README's evaluation)

from FemurUNetLib import segment_volume  # noqa: E402
from FemurUNetLib.modelfile import load_model  # noqa: E402
from FemurUNetLib.paths import DEFAULT_MODEL_PATH  # noqa: E402
from FemurUNetLib.phantom import write_case  # noqa: E402
from FemurUNetLib.phantom2 import generate_case  # noqa: E402
from FemurUNetTrainLib.cli import main as femurunet  # noqa: E402  (the `femurunet` command, in this process)
from FemurUNetTrainLib.options import RECIPES  # noqa: E402

SETTING = {"coverage": "pelvis", "spacing": [3.0, 3.0, 5.0], "scanner": {"noise": 80.0, "sharpen": 1.0}}
QUICK_SPACING = [10.0, 10.0, 10.0]
TRAIN_SEED, TEST_SEED = 81000, 80000
CALIBRATION = (2, 6)          # epochs x steps of the timing run; the second epoch is timed
ARMS = {"finetune": "fine-tuned from the starting model (--recipe finetune)",
        "scratch": "from scratch, the seed recipe (lr 1e-5, batch 20)",
        "scratch_finetune_recipe": "from scratch, the finetune recipe's settings"}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("outdir", type=Path)
    p.add_argument("--counts", default="1,2,4,8,16", help="training case counts (default 1,2,4,8,16)")
    p.add_argument("--held-out", type=int, default=20, help="held-out cases (default 20)")
    p.add_argument("--minutes", type=float, default=2.0, help="training time per run (default 2)")
    p.add_argument("--steps", type=int, help="fixed steps per run for every arm instead of --minutes")
    p.add_argument("--epochs", type=int, default=10, help="epochs per run, of equal length (default 10)")
    p.add_argument("--arms", default=",".join(ARMS), help=f"arms to run (default {','.join(ARMS)})")
    p.add_argument("--init", type=Path, default=DEFAULT_MODEL_PATH, help="starting model (default: the demo model)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: on a shared 2-core machine a "
                                                          "second thread made a step 2.7x slower)")
    p.add_argument("--quick", action="store_true", help="reduced form: counts 1,2, 2 held-out cases, 10 mm voxels, "
                                                         "1 epoch of 2 steps, no timing")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.quick:
        args.counts, args.held_out, args.steps, args.epochs = "1,2", 2, 2, 1
    args.counts = sorted({int(n) for n in args.counts.split(",")})
    wanted = args.arms.split(",")
    if set(wanted) - set(ARMS):
        p.error(f"--arms: choose from {', '.join(ARMS)}")
    args.arms = [a for a in ARMS if a in wanted]
    args.setting = dict(SETTING, spacing=QUICK_SPACING) if args.quick else SETTING
    return args


def make_case(seed, setting):
    return generate_case(seed, coverage=setting["coverage"], spacing=tuple(setting["spacing"]),
                         scanner=setting["scanner"])


def export_datasets(args, work: Path) -> dict:
    """Phantom files of the training cases and one exported folder per count (nested: the first n cases)."""
    paths = []
    for n in range(max(args.counts)):
        ct, label = (work / "phantoms" / f"phantom{TRAIN_SEED + n}_{k}.nii.gz" for k in ("ct", "femur"))
        if not label.exists():
            ct, label = write_case(make_case(TRAIN_SEED + n, args.setting), work / "phantoms")
        paths.append((ct, label))
    folders = {}
    for count in args.counts:
        folders[count] = work / f"train{count}"
        if not (folders[count] / "dataset.json").exists():
            for n, (ct, label) in enumerate(paths[:count]):
                run(["export", ct, label, folders[count], "--case", f"case{n:02d}", "--seed", n])
    return folders


def run(argv) -> None:
    code = femurunet([str(a) for a in argv])
    if code:
        raise SystemExit(f"femurunet {argv[0]} failed ({code}): {' '.join(map(str, argv))}")


def arm_arguments(arm, args) -> list:
    """``femurunet train`` options of an arm beyond data, steps and output."""
    if arm == "finetune":
        return ["--recipe", "finetune", "--init", args.init]
    meta = load_model(args.init).metadata          # from scratch at the starting model's size
    size = ["--recipe", "seed", "--base-filters", meta["base_filters"], "--input-size", meta["input_size"]]
    if arm == "scratch":
        return size
    flags = []                                     # the finetune recipe without its start (steps: ours)
    for key, value in RECIPES["finetune"].items():
        if key == "intensity.enabled":
            flags.append("--intensity-augment")
        elif key not in ("epochs", "steps_per_epoch"):
            flags += ["--" + key.replace("_", "-"), value]
    return size + flags


def train_run(arm, data, out: Path, args, epochs, steps_per_epoch) -> float:
    """One ``femurunet train`` run; its wall seconds."""
    started = time.perf_counter()
    run(["train", data, "--out", out, "--epochs", epochs, "--steps-per-epoch", steps_per_epoch, "--seed", 1,
         "--threads", args.threads, "--progress", "none", *arm_arguments(arm, args)])
    return time.perf_counter() - started


def step_seconds(arm, data, work: Path, args) -> float:
    """Seconds per training step of an arm: the second epoch of a short run (the first holds the start-up)."""
    out = work / "calibration" / f"{arm}.pt"
    train_run(arm, data, out, args, *CALIBRATION)
    records = [json.loads(line) for line in out.with_suffix(".log.jsonl").read_text().splitlines()]
    return records[-1]["seconds"] / CALIBRATION[1]


def evaluate(model: Path, cases, args) -> dict:
    """Dice of one model on the held-out cases, as evaluate_demo_model.py scores them."""
    net = load_model(model)

    def predict(ct, geometry):
        return segment_volume(ct, geometry, net, device="cpu").labelmap > 0
    rows = [case_row(TEST_SEED + i, case, predict) for i, case in enumerate(cases)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)      # HD95 of a model that finds nothing: no mean
        summary = phantom_summary(rows)
    hd95 = summary["hd95_mean_mm"]
    return {"dice_mean": summary["dice_mean"], "dice_std": summary["dice_std"], "dice_min": summary["dice_min"],
            "hd95_mean_mm": hd95 if np.isfinite(hd95) else None, "dice": [round(r["dice"], 4) for r in rows]}


def plot(results: dict, path: Path) -> None:
    """Dice vs cases per arm, the whole range (left) and the top (right)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), dpi=100)
    init = results["init"]["dice_mean"]
    for ax, low in zip(axes, (0.0, max(0.0, min(init, 0.9) - 0.05))):
        for arm, style in zip(ARMS, ("o-", "s--", "^-.")):
            runs = sorted((r for r in results["runs"] if r["arm"] == arm), key=lambda r: r["cases"])
            if runs:
                ax.errorbar([r["cases"] for r in runs], [r["dice_mean"] for r in runs],
                            yerr=[r["dice_std"] for r in runs], fmt=style, capsize=3, label=results["arms"][arm])
        ax.axhline(init, color="grey", linestyle=":", label="starting model, no training")
        ax.set_xscale("log", base=2)
        ax.set_xticks(results["counts"], [str(n) for n in results["counts"]])
        ax.set_ylim(low, 1)
        ax.set_xlabel("labelled training cases")
        ax.set_ylabel(f"Dice, {results['held_out']} held-out cases (mean, sd)")
    axes[0].legend(loc="center right", fontsize=8)
    fig.suptitle(f"Fine-tuning vs from scratch, equal CPU time per run ({results['budget']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def header(args, seconds) -> dict:
    budget = f"{args.steps} steps" if args.steps else f"{args.minutes:g} min"
    return {"setting": args.setting, "train_seeds": [TRAIN_SEED, TRAIN_SEED + max(args.counts) - 1],
            "held_out_seeds": [TEST_SEED, TEST_SEED + args.held_out - 1], "held_out": args.held_out,
            "counts": args.counts, "epochs": args.epochs, "budget": budget, "step_seconds": seconds,
            "init_model": str(args.init), "quick": args.quick, "threads": args.threads,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "arms": {arm: ARMS[arm] for arm in args.arms},
            "command": "python3 FemurUNetTrain/Scripts/learning_curve.py " + " ".join(args.argv), "runs": []}


def steps_of(arm, args, seconds) -> int:
    if args.steps:
        return args.steps
    return max(args.epochs, int(args.minutes * 60 / seconds[arm]) // args.epochs * args.epochs)


def previous(path: Path, args) -> dict:
    """The JSON of an interrupted or shorter run of the same measurement (its runs are kept), else {}."""
    old = json.loads(path.read_text()) if path.exists() else {}
    same = ("setting", "budget", "held_out", "init_model", "epochs")
    return old if {k: old.get(k) for k in same} == {k: header(args, {})[k] for k in same} else {}


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)             # the evaluation's; each training run sets its own
    work, path = args.outdir / "work", args.outdir / "learning_curve.json"
    folders = export_datasets(args, work)
    cases = [make_case(TEST_SEED + i, args.setting) for i in range(args.held_out)]
    old = previous(path, args)
    seconds = dict(old.get("step_seconds") or {})
    for arm in [] if args.steps else [a for a in args.arms if a not in seconds]:
        seconds[arm] = step_seconds(arm, folders[min(args.counts)], work, args)
    results = header(args, seconds)
    results["init"] = old.get("init") or evaluate(args.init, cases, args)
    done = {(r["arm"], r["cases"]): r for r in old.get("runs", [])}
    for count in args.counts:
        for arm in args.arms:
            if (arm, count) not in done:
                steps, out = steps_of(arm, args, seconds), work / f"{arm}_{count}.pt"
                wall = train_run(arm, folders[count], out, args, args.epochs, max(1, steps // args.epochs))
                done[arm, count] = {"arm": arm, "cases": count, "steps": steps, "train_seconds": round(wall, 1),
                                    **evaluate(out, cases, args)}
            results["runs"].append(done[arm, count])
            path.write_text(json.dumps(results, indent=1))
            print(json.dumps({k: v for k, v in done[arm, count].items() if k != "dice"}), flush=True)
    plot(results, args.outdir / "learning_curve.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
