"""Shared fixtures: real data paths, small real models with known behaviour."""
from __future__ import annotations

import contextlib
import getpass
import os
import re
import resource
import tempfile
from pathlib import Path

import pytest
import torch

from FemurUNetLib import UNet2D
from FemurUNetLib.modelfile import model_metadata, save_model
from FemurUNetLib.defaults import DEFAULT_WINDOW

if os.environ.get("PYTEST_XDIST_WORKER"):       # one test process per core (pytest -n): one torch thread each,
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"         # the processes its tests start included (no threads spinning idle)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
REAL_CT = SHARED_DATA / "real_ct"


@pytest.fixture(scope="session", autouse=True)
def session_temp_folder(tmp_path_factory):
    """Temporary files of the tests and of their subprocesses (torchrun's torchelastic_* folders, training logs)
    go under pytest's own temporary folder, removed after a passing run; torch.compile's cache stays where it was."""
    saved = os.environ.get("TMPDIR"), tempfile.tempdir
    with contextlib.suppress(Exception):       # torch's default cache folder, kept between runs
        user = re.sub(r'[\\/:*?"<>|]', "_", getpass.getuser())
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(tempfile.gettempdir(), "torchinductor_" + user))
    os.environ["TMPDIR"] = tempfile.tempdir = str(tmp_path_factory.mktemp("tmp"))
    yield
    tempfile.tempdir = saved[1]
    if saved[0] is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = saved[0]


@pytest.fixture(scope="session")
def bone_meshes():
    """The shared bone meshes (../shared/data/bone_meshes); tests that need them skip only when they are absent."""
    meshes = SHARED_DATA / "bone_meshes"
    if not meshes.is_dir():
        pytest.skip(f"shared bone meshes not found at {meshes} (clone the project beside ../shared)")
    return meshes


@pytest.fixture(scope="session")
def real_ct():
    """The shared real CT folder (../shared/data/real_ct); tests that need it skip only when it is absent."""
    if not REAL_CT.is_dir():
        pytest.skip(f"shared test data not found at {REAL_CT} (clone the project beside ../shared)")
    return REAL_CT


def threshold_unet(hu_threshold: float = 300.0, base_filters: int = 4, input_size: int = 256,
                   window=DEFAULT_WINDOW, steepness: float = 2000.0) -> UNet2D:
    """A real UNet2D whose weights route the windowed input straight to the head: p = sigmoid(s * (x - t)).

    Its labelmap is exactly ``HU > hu_threshold`` wherever the slice needs no resizing, so it checks
    geometry, orientation and batching voxel by voxel.
    """
    net = UNet2D(1, 1, base_filters)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        for conv in (net.enc[0][0], net.enc[0][2], net.dec[3][0], net.dec[3][2]):
            conv.weight[0, 0, 1, 1] = 1.0          # channel 0 carries the input (>= 0, so ReLU keeps it)
        t = (hu_threshold - (window[0] - window[1] / 2)) / window[1]
        t = (round(t * 255) + 0.5) / 255           # half a grey level: HU exactly on a step is unambiguous
        net.head.weight[0, 0, 0, 0] = steepness
        net.head.bias[0] = -steepness * t
    net.metadata = model_metadata(net)
    net.metadata["input_size"] = input_size
    net.metadata["window"] = {"center": window[0], "width": window[1]}
    return net.eval()


def expected_threshold_labels(hu, hu_threshold: float = 300.0, window=DEFAULT_WINDOW):
    import numpy as np
    from FemurUNetLib.preprocess import window_to_uint8
    t = (hu_threshold - (window[0] - window[1] / 2)) / window[1]
    step = round(t * 255)
    return (window_to_uint8(np.asarray(hu), *window) > step).astype("uint8")


@pytest.fixture
def threshold_model():
    return threshold_unet()


@pytest.fixture
def threshold_model_file(tmp_path):
    return save_model(threshold_unet(), tmp_path / "threshold.pt")


@pytest.fixture
def tiny_model_file(tmp_path):
    torch.manual_seed(0)
    return save_model(UNet2D(base_filters=4), tmp_path / "tiny.pt")


@contextlib.contextmanager
def size_limit(limit):
    """RLIMIT_FSIZE = ``limit`` bytes inside the block (a full disk for the writes made in it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
