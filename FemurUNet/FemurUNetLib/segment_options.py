"""The segmentation options of every command line that segments (``femurunet segment``, ``femurunet
segment-folder``, the Slicer batch script): one definition of their flags, types and help, and of how they
become ``segment_volume`` keywords."""
from __future__ import annotations

import argparse
import math

from .defaults import CONFIRM_FRACTION, GATE_THRESHOLD, MAX_FIELD_MM, MAX_SMOOTH_Z_MM

PRECISIONS = ("auto", "bf16", "fp32", "int8")


def probability(text: str) -> float:
    """A threshold strictly between 0 and 1."""
    value = _number(text, float)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1 (exclusive)")
    return value


def share(text: str) -> float:
    """A fraction of cases, 0 to 1 inclusive."""
    value = _number(text, float)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a share between 0 and 1")
    return value


def positive_int(text: str) -> int:
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a whole number of at least 1")
    return value


def positive_number(text: str) -> float:
    """A finite number above 0 (a duration, a rate)."""
    value = _number(text, float)
    if not value > 0.0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def field_mm(text: str) -> float:
    """A field of view in mm, 0..MAX_FIELD_MM (0: off)."""
    return _mm(text, MAX_FIELD_MM, "a field of view")


def sigma_mm(text: str) -> float:
    """A smoothing sigma in mm, 0..MAX_SMOOTH_Z_MM (0: off)."""
    return _mm(text, MAX_SMOOTH_Z_MM, "a sigma")


def _mm(text: str, most: float, what: str) -> float:
    value = _number(text, float)
    if not 0.0 <= value <= most:
        raise argparse.ArgumentTypeError(f"{text} is not {what} of 0..{most:g} mm")
    return value


def _number(text: str, kind):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole ' if kind is int else ''}number") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value


def add_segment_options(parser, fast: bool = True, model: bool = True, device: str = "auto") -> None:
    """[--model] --device --batch-size --threshold --precision (--no-autocast) --mirror [--fast] --keep-all-pieces
    --gate/--no-gate --gate-threshold --second-opinion --second-opinion-fraction --min-field --smooth-z.
    ``model=False``: the caller names the model itself (e.g. as positional arguments); ``device``: the default
    device."""
    if model:
        parser.add_argument("--model", help="model .pt (or Keras .hdf5); default: the shipped demo model")
    devices = [name + (" (default)" if name == device else "") for name in ("auto", "cpu", "cuda", "cuda:N", "mps")]
    parser.add_argument("--device", default=device, help=", ".join(devices[:-1]) + " or " + devices[-1])
    parser.add_argument("--batch-size", type=positive_int,
                        help="slices per batch (default: 8 on CPU, from free memory on CUDA)")
    parser.add_argument("--threshold", type=probability,
                        help="probability threshold, 0 < T < 1 (default: the model's, 0.5)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto (default: bf16/fp16 where the device is fast at it, else fp32), fp32, bf16, or "
                        "int8 (x86 CPU, needs torchao; labels agree 0.97-0.99 Dice with fp32's; a one-off "
                        "calibration and compile of ~20-40 s; measured no faster than bf16 on an AVX512-BF16 CPU)")
    parser.add_argument("--no-autocast", action="store_true", help="the same as --precision fp32")
    parser.add_argument("--mirror", action="store_true", help="test-time augmentation: average each slice's "
                        "output with its left-right mirror's (~2x time, a little more accurate)")
    if fast:
        parser.add_argument("--fast", action="store_true", help="run the network on every other slice (~2x "
                            "faster); skipped slices from their neighbours")
    parser.add_argument("--keep-all-pieces", action="store_true", help="keep labelled pieces detached from each "
                        "femur (by default only each side's femur and pieces of at least a fifth of its volume stay, "
                        "none wholly over 150 mm below both femurs; the others are usually other bones, e.g. the tibia "
                        "or the talus)")
    gates = parser.add_mutually_exclusive_group()
    gates.add_argument("--gate", metavar="FILE", help="a level gate file (docs/TRAINING.md: a level gate): a small "
                       "network that sees the whole scan at 4 mm; every label goes when it finds a femur on none of "
                       "the scan's slices (default: the shipped gate with the shipped demo model, none with another)")
    gates.add_argument("--no-gate", action="store_true", help="no level gate, not even the demo model's")
    parser.add_argument("--gate-threshold", type=share, metavar="P", help="the gate's probability one slice of the "
                        f"scan must reach for its labels to stay, 0..1 (default: {GATE_THRESHOLD:g})")
    parser.add_argument("--second-opinion", metavar="MODEL", help="a second model file that must label at least "
                        "--second-opinion-fraction of each labelled piece, or the piece goes (it runs only on slices "
                        "with labels; default: none; no second model ships: docs/MODEL_HISTORY.md)")
    parser.add_argument("--second-opinion-fraction", type=share, metavar="F", help="the share of each piece the "
                        f"second model must label, 0..1 (default: {CONFIRM_FRACTION:g}; needs --second-opinion)")
    parser.add_argument("--min-field", type=field_mm, metavar="MM", help="pad slices with air to at least this "
                        "field of view before the resize, so a small field is seen at the scale the model knows "
                        "(default: the model's: the demo model's 300 mm; 0: off)")
    parser.add_argument("--smooth-z", type=sigma_mm, metavar="MM", help="average each slice's probabilities with its "
                        "neighbours' along the slice axis before the threshold, a Gaussian of MM mm (a 2-D network's "
                        "slice-to-slice errors; default: the model's: the demo model's 3 mm; 0: off)")


def segment_keywords(args) -> dict:
    """``segment_volume`` / ``segment_and_import`` keywords of options parsed by ``add_segment_options``."""
    keywords = {"device": args.device, "batch_size": args.batch_size, "threshold": args.threshold,
                "autocast": autocast_value("fp32" if args.no_autocast else args.precision), "mirror": args.mirror,
                "keep_all_pieces": args.keep_all_pieces, "gate": False if args.no_gate else args.gate,
                "gate_threshold": args.gate_threshold,
                "min_field_mm": args.min_field, "smooth_z_mm": args.smooth_z,
                "confirm": args.second_opinion, "confirm_fraction": args.second_opinion_fraction}
    if hasattr(args, "fast"):
        keywords["fast"] = args.fast
    return keywords


def segment_flags(args) -> list:
    """The command-line flags that give ``segment_keywords(args)`` again (and ``--model`` when parsed): the
    options as a ``femurunet segment`` line names them."""
    flags = [*(["--model", str(args.model)] if getattr(args, "model", None) else []), "--device", args.device]
    for flag, value in (("--batch-size", args.batch_size), ("--threshold", args.threshold),
                        ("--second-opinion", args.second_opinion), ("--gate", args.gate),
                        ("--gate-threshold", args.gate_threshold),
                        ("--second-opinion-fraction", args.second_opinion_fraction), ("--min-field", args.min_field),
                        ("--smooth-z", args.smooth_z)):
        if value is not None:
            flags += [flag, _number_text(value) if isinstance(value, float) else str(value)]
    precision = "fp32" if args.no_autocast else args.precision
    flags += ["--precision", precision] if precision != "auto" else []
    for flag, on in (("--mirror", args.mirror), ("--fast", getattr(args, "fast", False)),
                     ("--keep-all-pieces", args.keep_all_pieces), ("--no-gate", args.no_gate)):
        flags += [flag] if on else []
    return flags


def _number_text(value: float) -> str:
    """300.0 -> '300', 0.7 -> '0.7'; exact where %g would round."""
    short = format(value, "g")
    return short if float(short) == value else repr(value)


def autocast_value(precision: str):
    """A --precision name as ``segment_volume``'s ``autocast`` (torch is imported only for bf16)."""
    if precision == "bf16":
        import torch
        return torch.bfloat16
    return {"auto": True, "fp32": False, "int8": "int8"}[precision]
