"""Compare a candidate's phantom rows with a stored model's rows on the same seeds (the rule sets kept in
docs/benchmarks, e.g. 2026-12-06_run17_rule_sets_s46.json), so the stored model need not run again.

    python3 FemurUNetTrain/Scripts/compare_to_rows.py STORED_SETS.json NEW.json [NEW2.json ...]

NEW.json: what ``evaluate_demo_model.py MODEL --no-real --json NEW.json`` writes (one model, or several under
"runs": each is compared). For every stored set whose seeds all have a row in the NEW files, one line: cases, mean
Dice stored -> new, min Dice, largest false positives, labels off the femur (sum), and the three seeds whose Dice
changed least (most lost first; a set without femur: its false positives, summed and largest); a set the NEW files
cover in part, or with other cases (a seed's grid shape or hip shape differs), is named so. The rows are only
comparable while the phantom code is the stored file's ("phantom_code"). Rules are judged on these numbers; the
script decides nothing.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

PROG = "compare_to_rows.py"
CASE_KEYS = ("shape", "hips", "oa", "tha")    # what makes two rows of one seed the same case
CASE_DEFAULTS = {"oa": False, "tha": False}   # rows written before a key existed


def read_json(path: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SystemExit(f"{PROG}: error: {path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SystemExit(f"{PROG}: error: {path}: not JSON ({exc})") from None


def new_rows(paths: list) -> dict:
    """{model: {seed: [rows]}} from evaluate_demo_model.py files, in file order (one seed may have rows of several
    cases: the same seed with another --hips or grid)."""
    models = {}
    for path in paths:
        result = read_json(path)
        for run in result.get("runs", [result]):
            if "phantoms" not in run:
                raise SystemExit(f"{PROG}: error: {path}: no phantom rows (evaluate_demo_model.py --json output?)")
            seeds = models.setdefault(str(run.get("model")), {})
            for r in run["phantoms"]:
                seeds.setdefault(int(r["seed"]), []).append(r)
    return models


def _case_differences(stored: dict, new: dict) -> list:
    """(key, stored value, new value) of the case keys on which two rows of one seed differ."""
    values = [(key, stored.get(key, CASE_DEFAULTS.get(key)), new.get(key, CASE_DEFAULTS.get(key))) for key in CASE_KEYS]
    return [(key, a, b) for key, a, b in values if a is not None and b is not None and a != b]


def _same_case(stored: dict, new: dict) -> bool:
    return not _case_differences(stored, new)


def matching_row(stored: dict, rows: list) -> dict:
    """The new row of the stored row's case (the same grid shape and hip shape; the last one when several), else
    the last row of its seed (then named a different case)."""
    return next((r for r in reversed(rows) if _same_case(stored, r)), rows[-1])


def summary(rows: list) -> dict:
    """Mean and min Dice over the rows with femur, largest and summed false positives, labels off the femur (sum;
    None when the rows with femur lack it) and labels in the feet (sum over the rows that have it; None when none
    has), in ml."""
    dice = [r["dice"] for r in rows if r.get("dice") is not None]
    return {"mean": sum(dice) / len(dice) if dice else float("nan"), "min": min(dice, default=float("nan")),
            "fp_max": max((r.get("false_positive_ml") or 0.0 for r in rows), default=0.0),
            "fp_sum": sum(r.get("false_positive_ml") or 0.0 for r in rows),
            "off": (sum(r.get("off_femur_ml") or 0.0 for r in rows)
                    if all("off_femur_ml" in r for r in rows if r.get("dice") is not None) else None),
            "feet": sum(r["foot_ml"] for r in rows if "foot_ml" in r) if any("foot_ml" in r for r in rows) else None}


def compare_line(name: str, stored: list, new: dict) -> str:
    """One line for a stored set against the new rows by seed."""
    missing = [r["seed"] for r in stored if int(r["seed"]) not in new]
    if missing:
        return f"{name}: not covered ({len(missing)} of {len(stored)} seeds missing, e.g. {missing[0]})"
    mine = [matching_row(r, new[int(r["seed"])]) for r in stored]
    other = [(s, *difference) for s, n in zip(stored, mine) for difference in _case_differences(s, n)]
    if other:
        s, key, was, now = other[0]
        return (f"{name}: different cases (seed {s['seed']}: {key} {was} stored, {now} new; "
                "another grid, --hips, --oa or --tha option, or phantom code?)")
    a, b = summary(stored), summary(mine)
    if all(r.get("dice") is None for r in stored):
        return (f"{name}: {len(stored)} femur-free cases, false positives {a['fp_sum']:.1f} -> {b['fp_sum']:.1f} ml "
                f"(largest {a['fp_max']:.1f} -> {b['fp_max']:.1f})" + _in_the_feet(a, b))
    moved = sorted((n["dice"] - s["dice"], int(s["seed"])) for s, n in zip(stored, mine)
                   if s.get("dice") is not None and n.get("dice") is not None)
    worst = ", ".join(f"{seed} {delta:+.3f}" for delta, seed in moved[:3])
    return (f"{name}: {len(stored)} cases, Dice {a['mean']:.4f} -> {b['mean']:.4f} ({b['mean'] - a['mean']:+.4f}), "
            f"min {a['min']:.3f} -> {b['min']:.3f}, largest false positives {a['fp_max']:.1f} -> {b['fp_max']:.1f} ml, "
            f"off the femur {_ml(a['off'])} -> {_ml(b['off'])} ml"
            + _in_the_feet(a, b) + f"; lowest changes: {worst}")


def _in_the_feet(a: dict, b: dict) -> str:
    return f", in the feet {_ml(a['feet'])} -> {_ml(b['feet'])} ml" if (a["feet"], b["feet"]) != (None, None) else ""


def _ml(value) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2:
        print(f"usage: {PROG} STORED_SETS.json NEW.json [NEW2.json ...]", file=sys.stderr)
        return 2
    stored = read_json(argv[0])
    if "sets" not in stored:
        raise SystemExit(f"{PROG}: error: {argv[0]}: no \"sets\" (a stored rule-sets file?)")
    print_comparison(stored, argv[1:], argv[0])
    return 0


def print_comparison(stored: dict, paths: list, stored_name: str, names=None) -> None:
    """A line per stored set (``names``: these only) for each model in the NEW files ``paths``."""
    for model, rows in new_rows(paths).items():
        print(f"{model} against {stored.get('model', stored_name)}")
        for name in names or stored["sets"]:
            print("  " + compare_line(name, stored["sets"][name]["rows"], rows))


if __name__ == "__main__":
    sys.exit(main())
