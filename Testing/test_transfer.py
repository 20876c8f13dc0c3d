"""The slice loop's host <-> device staging (transfer.SliceTransfer): the reusable-buffer logic that CUDA uses,
exercised on the CPU (staged=True), and the engine's result unchanged by it."""
import numpy as np
import torch

from FemurUNetLib.inference import segment_volume
from FemurUNetLib.transfer import SliceTransfer
from conftest import expected_threshold_labels


def test_uploads_alternate_between_two_reused_buffers_and_carry_the_slices():
    t = SliceTransfer(torch.device("cpu"), staged=True)
    rng = np.random.default_rng(0)
    slabs = [rng.integers(-1000, 2000, (n, 12, 10)).astype(np.int16) for n in (8, 8, 5, 8)]
    got = [t.upload(s) for s in slabs]
    for slab, tensor in zip(slabs[2:], got[2:]):
        assert tensor.dtype == torch.int16 and np.array_equal(tensor.numpy(), slab)
    assert got[2].data_ptr() == got[0].data_ptr() and got[3].data_ptr() == got[1].data_ptr()   # reused, in turn
    assert got[1].data_ptr() != got[0].data_ptr()
    assert np.array_equal(got[3].numpy(), slabs[3]) and np.array_equal(got[2].numpy(), slabs[2])   # both still valid


def test_a_larger_batch_or_another_dtype_gets_a_new_buffer():
    t = SliceTransfer(torch.device("cpu"), staged=True)
    small = t.upload(np.zeros((2, 4, 4), np.int16))
    t.upload(np.zeros((2, 4, 4), np.int16))
    big = t.upload(np.ones((6, 4, 4), np.int16))
    assert big.shape == (6, 4, 4) and big.data_ptr() != small.data_ptr() and int(big.sum()) == 96
    floats = t.upload(np.full((3, 4, 4), 2.5, np.float32))
    assert floats.dtype == torch.float32 and float(floats.sum()) == 120.0


def test_unstaged_upload_shares_the_array_and_download_on_the_cpu_is_plain():
    t = SliceTransfer(torch.device("cpu"))
    slab = np.arange(2 * 3 * 3, dtype=np.int16).reshape(2, 3, 3)
    assert not t.staged and t.upload(slab).data_ptr() == slab.ctypes.data          # no copy on the CPU
    labels = torch.ones(2, 3, 3, dtype=torch.uint8)
    host, event = t.download("labels", labels)
    assert event is None and torch.equal(host, labels) and t.download("probabilities", None) is None


def test_engine_labels_are_exact_with_odd_batches(threshold_model):
    hu = np.random.default_rng(1).integers(-500, 1500, (11, 256, 256)).astype(np.int16)   # 256: no resizing
    r = segment_volume(hu, None, threshold_model, device="cpu", batch_size=4, autocast=False, keep_all_pieces=True,
                       return_probabilities=True)
    assert np.array_equal(r.labelmap, expected_threshold_labels(hu)) and r.stats["slices"] == 11
    assert np.array_equal(r.probabilities > 0.5, r.labelmap > 0)


def test_a_strided_slab_is_staged_without_a_copy_first():
    t = SliceTransfer(torch.device("cpu"), staged=True)
    volume = np.arange(4 * 6 * 6, dtype=np.int16).reshape(4, 6, 6)
    strided = volume[:, ::-1, ::2]                      # a flipped, subsampled view (canonical reorientation)
    assert np.array_equal(t.upload(strided).numpy(), strided)


def test_fast_mode_fills_and_thresholds_before_the_copy_back(monkeypatch, threshold_model):
    """--fast through staged buffers (CUDA's path, on the CPU): the same labels and probabilities as unstaged."""
    import FemurUNetLib.inference as inference
    hu = np.random.default_rng(2).integers(-500, 1500, (12, 64, 64)).astype(np.int16)
    kw = dict(device="cpu", batch_size=3, autocast=False, keep_all_pieces=True, return_probabilities=True, fast=True)
    plain = segment_volume(hu, None, threshold_model, **kw)
    monkeypatch.setattr(inference, "SliceTransfer", lambda device: SliceTransfer(device, staged=True))
    staged = segment_volume(hu, None, threshold_model, **kw)
    assert np.array_equal(staged.labelmap, plain.labelmap) and np.array_equal(staged.probabilities, plain.probabilities)
    mean = (plain.probabilities[4] + plain.probabilities[6]) / 2       # slice 5 sits across a batch boundary
    assert np.array_equal(plain.probabilities[5], mean) and np.array_equal(plain.labelmap[5], (mean > 0.5))


def test_filled_gaps_join_the_previous_batch_and_skip_none_after_the_last_slice():
    from FemurUNetLib.inference import _with_filled_gaps
    p = {k: torch.full((1, 2, 2), float(k)) for k in range(12)}
    first, block = _with_filled_gaps([4, 6], torch.stack([p[4], p[6]]), (2, p[2]))
    assert first == 3 and block[:, 0, 0, 0].tolist() == [3.0, 4.0, 5.0, 6.0]
    first, block = _with_filled_gaps([0, 2], torch.stack([p[0], p[2]]), None)
    assert first == 0 and block[:, 0, 0, 0].tolist() == [0.0, 1.0, 2.0]
    first, block = _with_filled_gaps([11], torch.stack([p[11]]), (10, p[10]))     # even depth: the last slice
    assert first == 11 and block[:, 0, 0, 0].tolist() == [11.0]
