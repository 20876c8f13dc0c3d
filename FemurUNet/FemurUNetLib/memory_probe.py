"""Peak memory of segmenting one volume, measured in a process of its own (``femurunet benchmark``, section memory).

usage: python -m FemurUNetLib.memory_probe VOLUME.npy BASE_FILTERS DEVICE [INPUT_SIZE]   (prints one JSON line)
"""
import json
import resource
import sys

import numpy as np
import torch

from FemurUNetLib import UNet2D, segment_volume
from FemurUNetLib.device import pick_device
from FemurUNetLib.inference import auto_batch_size
from FemurUNetLib.modelfile import model_metadata

SCALE = 1 if sys.platform == "darwin" else 1024     # ru_maxrss: bytes on macOS, KiB on Linux


def status(key):
    try:
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key + ":"))
    except (OSError, StopIteration):
        return None


def reset_peak():  # Linux: restart the high-water mark from the current RSS
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def max_rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * SCALE


def main(path, base, device, input_size=256) -> dict:
    torch.manual_seed(0)
    net = UNet2D(base_filters=base)
    net.metadata = {**model_metadata(net), "input_size": input_size}
    batch = auto_batch_size(pick_device(device), base, input_size)
    segment_volume(np.zeros((batch, 512, 512), np.int16), None, net, device=device)      # warm up
    warm_peak = max_rss()
    reset = reset_peak() and status("VmHWM") is not None
    before = status("VmRSS") if reset else warm_peak
    volume = np.load(path)
    result = segment_volume(volume, None, net, device=device)
    peak = status("VmHWM") if reset else max_rss()
    return {"slices": int(volume.shape[0]), "volume_bytes": volume.nbytes,
            "labelmap_bytes": result.labelmap.nbytes, "rss_before_bytes": before, "peak_rss_bytes": peak,
            "segment_peak_bytes": peak - before, "warmup_peak_rss_bytes": warm_peak,
            "process_peak_rss_bytes": max_rss(), "peak_reset": reset}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], *map(int, sys.argv[4:5]))))
