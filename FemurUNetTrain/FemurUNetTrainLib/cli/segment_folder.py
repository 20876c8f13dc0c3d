"""``femurunet segment-folder``: every CT of a folder into ``<case>.seg.nrrd`` and one ``femurunet_results.csv``.

The Slicer batch script's behaviour and CSV (``FemurUNet/Scripts/segment_folder.py``; both take their input
selection, case names, CSV and contact sheet from ``FemurUNetLib.batch``) in plain Python, without Slicer.
Resumable: a case an earlier run finished (its row in the CSV, its .seg.nrrd whole) is kept, status ``done
earlier``. Under ``torchrun`` the cases are split over the processes (balanced by size); each process writes
its rows to a part file as it goes (what an interrupted run finished is kept), and rank 0 gathers them into the
one CSV at the end. A failed case is a CSV
row (status failed, one-line error) and never stops the others; the exit code is then 1, naming them.
"""
from __future__ import annotations

import os
import signal
import sys
from datetime import timedelta
from pathlib import Path

from FemurUNetLib.batch import (FINISHED, PART_GLOB, RESULTS_NAME, case_cost, case_name, done_earlier,
                                duplicate_cases, new_row, part_name, previous_rows, report,
                                segment_case, select_inputs, shard, skipped_rows, write_csv, write_index)
from FemurUNetLib.errors import FemurUNetError
from FemurUNetLib.segment_options import add_segment_options, positive_int, segment_keywords

from ..distributed import Dist

WAIT = timedelta(days=7)   # a process done early waits this long for the others (the default is 30 minutes)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not Linux
        return os.cpu_count() or 1


def _start(args) -> tuple:
    """(Dist, device name): one process, or this process of a torchrun group (gloo: only file names and a
    barrier travel between processes; each computes on its own device, ``cuda:LOCAL_RANK`` where GPUs are)."""
    import torch
    import torch.distributed as dist
    from FemurUNetLib.device import pick_device
    world, local_rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))
    if args.threads or world > 1:   # torchrun sets OMP_NUM_THREADS=1: share the cores among this node's processes
        torch.set_num_threads(args.threads or max(1, _cores() // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    device = pick_device(args.device)
    if device.type == "cuda" and device.index is None and world > 1:
        if local_rank >= torch.cuda.device_count():
            raise FemurUNetError(f"process {local_rank} of this node has no GPU ({torch.cuda.device_count()} "
                                 "visible): start at most one process per GPU (--nproc-per-node)")
        device = torch.device("cuda", local_rank)
    if world <= 1:
        return Dist(), str(device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("gloo", timeout=WAIT)
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank, owns), str(device)


def _plan(args, world: int) -> dict:
    """Rank 0's look at the inputs and earlier results, the same for every process: inputs, skipped files,
    earlier finished rows and each rank's cases. Raises FemurUNetError / OSError on bad input."""
    inputs, skipped = select_inputs(args.inputs, args.include, args.exclude)
    for path, why in skipped:
        print(f"skipped {path.name}: {why}")
    if not inputs:
        note = f" ({len(skipped)} skipped: {'; '.join(f'{p.name}: {why}' for p, why in skipped)})" if skipped else ""
        raise FemurUNetError(f"no CT files in {' '.join(map(str, args.inputs))}{note}")
    twice = duplicate_cases(inputs)
    if twice:
        raise FemurUNetError(f"several inputs would write the same output: {', '.join(twice)} (rename them, or "
                             "pick one with --include / --exclude)")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    previous = {} if args.redo else previous_rows(out)
    costs = [0 if done_earlier(previous, out, case_name(p), args.qc, check=False) else case_cost(p) for p in inputs]
    return {"inputs": [str(p) for p in inputs], "skipped": [(str(p), why) for p, why in skipped],
            "previous": previous, "shards": shard(costs, world)}


def _shared_plan(ctx: Dist, args):
    """The plan on every process (rank 0 makes it and sends it); None on the other ranks when rank 0 failed."""
    plan, failure = None, None
    if ctx.main:
        try:
            plan = _plan(args, ctx.world)
        except (FemurUNetError, OSError) as exc:
            failure = exc
    if ctx.world > 1:
        import torch.distributed as dist
        box = [plan]
        dist.broadcast_object_list(box, src=0)
        plan = box[0]
    if failure is not None:
        raise failure
    return plan


def _run_shard(ctx: Dist, plan: dict, net, args, device: str) -> list:
    """This process's cases, one after another; its rows written to its part file after each one."""
    out, mine = Path(args.output), plan["shards"][ctx.rank]
    part, rows = out / part_name(ctx.rank), []
    prefix = f"rank {ctx.rank}: " if ctx.world > 1 else ""
    write_csv(rows, part)
    for n, index in enumerate(mine, 1):
        path = Path(plan["inputs"][index])
        row = None if args.redo else done_earlier(plan["previous"], out, case_name(path), args.qc)
        if row is None:
            row = segment_case(path, out, net, qc=args.qc, **{**segment_keywords(args), "device": device})
        report(row, n, len(mine), prefix)
        rows.append(row)
        write_csv(rows, part)   # an interrupted run leaves what it finished; the next run reads it back
    return rows


def _gather(ctx: Dist, rows: list):
    """Every process's rows on rank 0 (a list per rank; None on the others): no shared folder needed for the CSV."""
    if ctx.world == 1:
        return [rows]
    import torch.distributed as dist
    everything = [None] * ctx.world if ctx.main else None
    dist.gather_object(rows, everything, dst=0)
    return everything


def _merge(plan: dict, args, everything: list) -> int:
    """Rank 0, with every process's rows: one CSV in input order (then the skipped files), the contact sheet, the
    summary; 1 when a case failed."""
    out = Path(args.output)
    found = {row["case"]: row for rows in everything for row in rows}
    rows = [found.get(case_name(Path(p))) or new_row(Path(p), error="no result: its process ended early")
            for p in plan["inputs"]]
    listed = rows + skipped_rows([(Path(p), why) for p, why in plan["skipped"]])
    csv_path = write_csv(listed, out / RESULTS_NAME)
    if args.qc:
        print(f"contact sheet: {write_index(listed, out)}")
    for part in out.glob(PART_GLOB):   # merged (stale ones of an earlier, wider run were read at its start)
        part.unlink(missing_ok=True)
    failed = [row["case"] for row in rows if row["status"] not in FINISHED]
    earlier = sum(row["status"] != "ok" for row in rows) - len(failed)
    also = (f" ({earlier} done earlier)" if earlier else "") + (
        f", {len(plan['skipped'])} file(s) skipped (not CTs)" if plan["skipped"] else "")
    print(f"{len(rows) - len(failed)}/{len(rows)} cases segmented{also}; results in {csv_path}")
    if failed:
        print(f"femurunet segment-folder: {len(failed)} case(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def run_segment_folder(args) -> int:
    from FemurUNetLib.resolve import resolve_model
    if hasattr(signal, "SIGXFSZ"):   # past the file size limit: an error from the write, not a killed process
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    net = resolve_model(args.model)   # an unusable model stops every process before any work
    ctx, device = _start(args)
    try:
        plan = _shared_plan(ctx, args)
        if plan is None:
            return 2   # rank 0 said why
        everything = _gather(ctx, _run_shard(ctx, plan, net, args, device))
        code = _merge(plan, args, everything) if ctx.main else 0
        ctx.barrier()   # the CSV is written: each process's part file can go (its node may not share the folder)
        (Path(args.output) / part_name(ctx.rank)).unlink(missing_ok=True)
        return code
    finally:
        if ctx.owns_group:
            import torch.distributed as dist
            dist.destroy_process_group()


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "segment-folder", help="segment every CT of a folder (resumable; split over processes by torchrun)",
        description="Segment every CT file / DICOM series folder of the inputs into OUTPUT/<case>.seg.nrrd and "
                    "OUTPUT/femurunet_results.csv (case, femur voxels, ml, seconds, status, error, warnings). "
                    "Label volumes, .seg.nrrd files and hidden files are skipped. A rerun keeps the cases an "
                    "earlier run finished (status 'done earlier'). Under torchrun the cases are split over the "
                    "processes (--device auto/cuda: cuda:LOCAL_RANK). Exit 1 naming the failed cases, 2 on bad arguments.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="folders of CTs (one level deep), CT files or DICOM "
                                                               "series folders")
    p.add_argument("output", metavar="OUTPUT", help="folder for the .seg.nrrd files and the CSV (created if missing)")
    add_segment_options(p)
    p.add_argument("--qc", action="store_true", help="also write <case>_qc.png per case and index.html, a contact "
                                                     "sheet of the folder")
    p.add_argument("--include", nargs="+", action="extend", default=[], metavar="PATTERN",
                   help="segment only files/folders whose name matches one of these globs, e.g. '*_ct.nii.gz'")
    p.add_argument("--exclude", nargs="+", action="extend", default=[], metavar="PATTERN",
                   help="skip files/folders whose name matches one of these globs, e.g. '*_femur.nii.gz'")
    p.add_argument("--redo", action="store_true", help="segment every case again, also those an earlier run finished")
    p.add_argument("--threads", type=positive_int, help="CPU threads per process (default: all cores; under "
                                                        "torchrun the node's cores / its processes)")
    p.set_defaults(func=run_segment_folder)
