"""``femurunet benchmark``: the engine's sections plus the training step."""
from __future__ import annotations

import json
from pathlib import Path

from FemurUNetLib.benchmark import SECTIONS as ENGINE_SECTIONS, run_benchmark
from FemurUNetLib.errors import FemurUNetError
from FemurUNetLib.fileio import atomic_write

from .. import benchmark as training_benchmark

EXTRA_SECTIONS = (training_benchmark.SECTION,)
SECTIONS = ENGINE_SECTIONS + tuple(name for name, _, _ in EXTRA_SECTIONS)


def run_cli(args) -> int:
    sections = None
    if args.sections:
        sections = [x.strip() for x in args.sections.split(",") if x.strip()]
        unknown = sorted(set(sections) - set(SECTIONS))
        if unknown:
            raise FemurUNetError(f"unknown section(s) {', '.join(unknown)} (choose from {', '.join(SECTIONS)})")
    report = run_benchmark(args.device, args.quick, args.depth, args.model, args.compile, sections, EXTRA_SECTIONS)
    if args.json:
        text = json.dumps(report, indent=1)
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(text))
        print(f"results -> {args.json}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("benchmark", help="measure speed and accuracy ratios of the engine on this machine",
                              description="GEMM peak, U-Net throughput, end-to-end overhead, seed-style baseline, "
                                          "memory growth, training step and autocast accuracy, in one process.")
    p.add_argument("--json", metavar="OUT", help="write every figure to this JSON file")
    p.add_argument("--quick", action="store_true", help="small inputs (depth 4, 128 x 128 forward), base 16 only, short timing loops (< 1 min)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--depth", type=int, help="phantom slices N (default 64; --quick 4); memory also runs 4N")
    p.add_argument("--model", help="model .pt for the accuracy section (default: the shipped demo model)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd forward rows")
    p.add_argument("--sections", help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.set_defaults(func=run_cli)
