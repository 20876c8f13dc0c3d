"""Measure a candidate model on stored rule sets and compare it with the stored model's rows, in one command.

    python3 FemurUNetTrain/Scripts/run_rule_sets.py STORED_SETS.json MODEL.pt [--sets WORD ...] [--out DIR]
        [segment options of evaluate_demo_model.py, e.g. --device cuda]

STORED_SETS.json: a rule-sets file in docs/benchmarks (e.g. 2026-12-06_run17_rule_sets_s46.json), whose sets each
keep the ``evaluate_demo_model.py`` command that made their rows. ``--sets``: words that each pick the one stored
set whose name holds them (e.g. ``93400 one-leg``; default: every set), in the order given. Each set runs through
``evaluate_demo_model.py MODEL --no-real <its command>`` into DIR/<set>.json; a set whose file is already there for
the same model is not run again (run two of these with different ``--sets`` to use two processes). Then
``compare_to_rows.py``'s line for each picked set. The rows are only comparable while the phantom code is the stored
file's; the script decides nothing.
"""
from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare_to_rows  # noqa: E402
import evaluate_demo_model  # noqa: E402

PROG = "run_rule_sets.py"


def parse_args(argv):
    """(the script's options, the options passed on to evaluate_demo_model.py)."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("stored", metavar="STORED_SETS.json")
    parser.add_argument("model", metavar="MODEL.pt")
    parser.add_argument("--sets", nargs="+", default=[], metavar="WORD", help="pick sets by words in their names")
    parser.add_argument("--out", default="rule_sets", metavar="DIR", help="rows per set (default: rule_sets)")
    return parser.parse_known_args(argv)


def pick_sets(stored: dict, words: list) -> list:
    """The names of the stored sets the words pick (every set for none); a word must pick exactly one."""
    names = list(stored["sets"])
    picked = []
    for word in words:
        hits = [name for name in names if word in name]
        if len(hits) != 1:
            raise SystemExit(f"{PROG}: error: --sets {word!r} matches {len(hits)} sets; the stored ones: "
                             + "; ".join(names))
        picked += [hit for hit in hits if hit not in picked]
    return picked or names


def set_file(out: Path, name: str) -> Path:
    return out / (re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") + ".json")


def done_before(path: Path, model: str) -> bool:
    """The set's rows are there from this model; rows of another model are refused, not overwritten."""
    if not path.is_file():
        return False
    made_by = compare_to_rows.read_json(str(path)).get("model")
    if made_by != model:
        raise SystemExit(f"{PROG}: error: {path}: rows of model {made_by}, not {model} (another --out, or delete it)")
    return True


def main(argv=None) -> int:
    args, passed_on = parse_args(sys.argv[1:] if argv is None else argv)
    stored = compare_to_rows.read_json(args.stored)
    if "sets" not in stored or not all("command" in entry for entry in stored["sets"].values()):
        raise SystemExit(f"{PROG}: error: {args.stored}: no sets with their commands (a stored rule-sets file?)")
    names = pick_sets(stored, args.sets)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for name in names:
        path = set_file(out, name)
        if not done_before(path, args.model):
            command = shlex.split(stored["sets"][name]["command"])
            evaluate_demo_model.main([args.model, "--no-real", *command, *passed_on, "--json", str(path)])
        files.append(str(path))
    compare_to_rows.print_comparison(stored, files, args.stored, names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
