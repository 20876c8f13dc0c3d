"""int8 inference on x86 CPUs: post-training static quantization of the U-Net with torchao's PT2E flow.

The maintained path for torch 2.13 (``torch.ao.quantization`` is deprecated in it): ``torch.export`` the model,
``prepare_pt2e`` with the ``X86InductorQuantizer`` (per-channel int8 weights, uint8 activations), calibrate,
``convert_pt2e``, then ``torch.compile`` with frozen weights, which lowers the quantized convolutions to oneDNN's
int8 (VNNI/AMX) kernels. Calibration is fixed: slices of two built-in phantom v2 cases, so a model quantizes to
the same int8 graph on every run (and torch's compile cache can reuse it). Needs the optional ``torchao``
package (``pip install "femurunet[int8]"``).
"""
from __future__ import annotations

import contextlib
import logging
import weakref

import torch

from .errors import FemurUNetError
from .neighbours import ONE_SLICE, SliceStack, model_offsets
from .preprocess import to_model_input, window_hu

CALIBRATION_CASES = (("abdomen_to_thigh", 12), ("whole_leg", 12))   # coverage, slices (seed CALIBRATION_SEED)
CALIBRATION_SEED = 7
_QUANTIZED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()   # model -> {(window, size): int8 model}
FLOAT_MODULES = ("enc.0", "dec.3", "head")   # first and last blocks stay float: labels agree 0.990 -> 0.993


def int8_unavailable_reason(device: torch.device) -> str:
    """'' where int8 can run, else why not (one line)."""
    if device.type != "cpu":
        return f"int8 runs on the CPU only (device {device})"
    if "x86" not in torch.backends.quantized.supported_engines:
        return "int8 needs an x86-64 CPU (torch has no x86 quantized engine here)"
    try:
        _torchao()
    except ImportError:
        return "int8 needs the torchao package: pip install torchao (or femurunet[int8])"
    return ""


def _torchao():
    with _quiet_loggers("torchao", "torch.utils._pytree"):    # optional native parts it lacks here, deprecations
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
    return prepare_pt2e, convert_pt2e, xiq


@contextlib.contextmanager
def _quiet_loggers(*names):
    loggers = [logging.getLogger(n) for n in names]
    saved = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, saved):
            lg.setLevel(level)


def calibration_batch(window, size: int, offsets=ONE_SLICE) -> torch.Tensor:
    """(N, C, size, size) model inputs: axial slices of the built-in calibration phantoms (C: ``offsets``)."""
    from .phantom2 import generate_case

    slices = []
    for coverage, n in CALIBRATION_CASES:
        case = generate_case(CALIBRATION_SEED, coverage=coverage, shape=(n, 256, 256), jobs=1)
        ct = case.ct                       # axial slices along numpy axis 0 (the stack's direction does not matter)
        pictures = to_model_input(window_hu(torch.from_numpy(ct), *window), size)
        slices.append(SliceStack(offsets, case.geometry.spacing[2], len(ct)).blend(pictures, slice(None)))
    return torch.cat(slices)


def quantize_int8(model: torch.nn.Module, window, size: int, device: torch.device = torch.device("cpu")):
    """The compiled int8 model: (N, 1, size, size) inputs -> probabilities; each new N compiles once. Kept per
    model object, so the volumes of a batch run quantize once. Where int8 cannot run: a one-line error."""
    reason = int8_unavailable_reason(device)
    if reason:
        raise FemurUNetError(reason)
    cache = _QUANTIZED.setdefault(model, {})
    key = (tuple(window), int(size))
    if key not in cache:
        cache[key] = _quantize(model, window, size)
    return cache[key]


def convert_int8(model: torch.nn.Module, window, size: int, float_modules=FLOAT_MODULES) -> torch.nn.Module:
    """The calibrated int8 model before compiling (quantize/dequantize nodes; runs eagerly with the same
    numerics); ``float_modules`` stay float."""
    prepare_pt2e, convert_pt2e, xiq = _torchao()
    model = model.eval()
    offsets = model_offsets(getattr(model, "metadata", {"in_channels": model.in_channels}))
    example, n = torch.zeros(8, len(offsets), size, size), torch.export.Dim("batch", max=1 << 16)
    quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
    for name in float_modules:
        quantizer.set_module_name_qconfig(name, None)
    with torch.no_grad(), _quiet_loggers("torchao", "torch._export", "torch.export"):
        exported = torch.export.export(model, (example,), dynamic_shapes=({0: n},)).module()
        prepared = prepare_pt2e(exported, quantizer)
        for chunk in calibration_batch(window, size, offsets).split(8):
            prepared(chunk)
        return convert_pt2e(prepared)


def _quantize(model: torch.nn.Module, window, size: int):
    converted = convert_int8(model, window, size)
    import torch._inductor.config as inductor_config

    with inductor_config.patch(freezing=True):
        compiled = torch.compile(converted, dynamic=False)
    return _Frozen(compiled)


class _Frozen:
    """Calls the compiled int8 model with inductor's weight freezing on (it must be on at every call that may
    compile)."""

    def __init__(self, compiled):
        self.compiled = compiled

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import torch._inductor.config as inductor_config

        with inductor_config.patch(freezing=True):
            return self.compiled(x.contiguous())
