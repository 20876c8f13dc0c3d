"""``femurunet sample``: synthetic CT phantoms with exact femur labels."""
from __future__ import annotations

from FemurUNetLib import phantom, phantom2
from FemurUNetLib.phantom2_hips import HIP_SHAPES
from FemurUNetLib.errors import FemurUNetError


def run_sample(args) -> int:
    if args.cases < 1:
        raise FemurUNetError(f"--cases must be at least 1, got {args.cases}")
    if args.seed < 0:
        raise FemurUNetError(f"--seed must be >= 0, got {args.seed}")
    if args.coverage and args.phantom != 2:
        raise FemurUNetError("--coverage needs --phantom 2")
    if args.hips and args.phantom != 2:
        raise FemurUNetError("--hips needs --phantom 2")
    if args.oa and args.phantom != 2:
        raise FemurUNetError("--oa needs --phantom 2")
    if args.tha and args.phantom != 2:
        raise FemurUNetError("--tha needs --phantom 2")
    if args.phantom == 2:
        generate = phantom2.generate_case
    else:
        generate = phantom.generate_case
    for n in range(args.cases):
        forced = {"coverage": args.coverage, "hips": args.hips, "oa": args.oa, "tha": args.tha}
        case = generate(args.seed + n, **{k: v for k, v in forced.items() if v})
        ct_path, label_path = phantom.write_case(case, args.outdir)
        nk, nj, ni = case.ct.shape
        sp = case.geometry.spacing
        femurs = getattr(case, "femurs", "")
        extra = [getattr(case, "coverage", ""), getattr(case, "body", ""),
                 f"femurs of LibHip {femurs}" if femurs not in ("", "atlas") else "",
                 f"a targeted {case.hip_field} hip field" if case.hip_field else "",
                 "hip bones of MRI2PSM" if getattr(case, "hips", "") == "mri2psm" else "",
                 "osteoarthritic hips" if getattr(case, "oa", False) else "",
                 "a hip arthroplasty" if getattr(case, "tha", False) else "",
                 "metal" if case.metal else "", "arms" if case.arms else ""]
        print(f"{case.name}: {ni}x{nj}x{nk} voxels, {sp[0]:.2f}x{sp[1]:.2f}x{sp[2]:.2f} mm"
              f"{''.join(', ' + e for e in extra if e)} -> {ct_path} {label_path.name}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("sample", help="write synthetic CT phantoms with exact femur labels",
                              description="Write synthetic CT phantoms (<name>_ct.nii.gz, <name>_femur.nii.gz; "
                                          "label 1 = left femur, 2 = right femur).")
    p.add_argument("outdir", metavar="OUTDIR", help="output folder (created if missing)")
    p.add_argument("--cases", type=int, default=1, help="number of cases (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first case; case i uses seed S+i (default 0)")
    p.add_argument("--phantom", type=int, choices=(1, 2), default=2,
                   help="2 (default): real bone shapes, CT-like tissue and scanner physics, any coverage; "
                        "1: the analytic hip phantom of the first demo models")
    p.add_argument("--coverage", choices=phantom2.ALL_COVERAGES,
                   help="phantom 2 only: scan range (default: drawn per case; lower_leg, a shin "
                        "without femur, only when asked)")
    p.add_argument("--hips", choices=HIP_SHAPES, help="phantom 2 only: hip bone shape (default: drawn per case; "
                   "mri2psm: sockets that hug the femoral head)")
    p.add_argument("--oa", action="store_true", help="phantom 2 only: osteoarthritic hips "
                   "(subchondral sclerosis, cysts, osteophytes: the femur's are labelled)")
    p.add_argument("--tha", action="store_true", help="phantom 2 only: a total hip arthroplasty on one side "
                   "(head and neck resected; the femoral component is labelled femur)")
    p.set_defaults(func=run_sample)
