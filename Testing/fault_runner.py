"""``python fault_runner.py ARGS...``: ``femurunet ARGS...`` whose image write stops half way, for fault tests.

SimpleITK writes the whole file, then the file is cut to half its size (as a write killed part way leaves it),
``WRITING <temporary file>`` is printed and the process waits for a line on stdin: ``finish`` completes the file
and lets the command go on; the test can instead SIGKILL the process while it waits.
"""
import os
import sys

import SimpleITK as sitk

_real_write = sitk.WriteImage


def _paused_write(image, path, *args, **kwargs):
    _real_write(image, path, *args, **kwargs)
    os.truncate(path, os.path.getsize(path) // 2)
    print("WRITING", path, flush=True)
    if sys.stdin.readline().strip() == "finish":
        _real_write(image, path, *args, **kwargs)


if __name__ == "__main__":
    sitk.WriteImage = _paused_write
    from FemurUNetTrainLib.cli import main
    sys.exit(main(sys.argv[1:]))
