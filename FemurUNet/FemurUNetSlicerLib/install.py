"""Python requirements of Femur U-Net in Slicer: PyTorch from the PyTorch extension, other packages via pip.

Slicer's own numpy and SimpleITK are never installed or upgraded (a pip constraints file pins them).
"""
import importlib.util
import inspect
import os
import re
import tempfile

import slicer

# the engine needs torch.OutOfMemoryError and torch.serialization.safe_globals, both new in PyTorch 2.5
MIN_TORCH_VERSION = (2, 5)
# import name -> pip requirement; packages Slicer ships (numpy, SimpleITK) are never installed or upgraded
PIP_REQUIREMENTS = {"h5py": "h5py>=3.8", "PIL": "Pillow", "matplotlib": "matplotlib>=3.6"}
PROTECTED_DISTRIBUTIONS = ("numpy", "SimpleITK", "torch")
KERAS_SUFFIXES = (".h5", ".hdf5", ".keras")   # a Keras model file is converted with h5py


def modelImports(model) -> tuple:
    """The imports segmenting with ``model`` needs (a path, a loaded model or None): torch, and h5py for Keras."""
    isKeras = isinstance(model, (str, os.PathLike)) and str(model).lower().endswith(KERAS_SUFFIXES)
    return ("torch", "h5py") if isKeras else ("torch",)


def torchVersionProblem(version: str) -> str:
    """Why this PyTorch version cannot run Femur U-Net (one line), or "" when it can."""
    match = re.match(r"(\d+)\.(\d+)", version or "")
    if match and (int(match.group(1)), int(match.group(2))) >= MIN_TORCH_VERSION:
        return ""
    minimum = ".".join(str(v) for v in MIN_TORCH_VERSION)
    return (f"Femur U-Net needs PyTorch {minimum} or later, but PyTorch {version or '(unknown version)'} is "
            "installed: update it in the PyTorch Utils module (uninstall, restart Slicer, install) and try again.")


def ensureTorch():
    """PyTorch >= MIN_TORCH_VERSION, from the PyTorch extension if missing (it asks before installing).

    Raises RuntimeError (one line) when PyTorch is not installed, not wanted, or too old (for example installed by
    another extension).
    """
    minimum = ".".join(str(v) for v in MIN_TORCH_VERSION)
    if importlib.util.find_spec("torch") is None:
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            raise RuntimeError("Femur U-Net needs PyTorch: install the 'PyTorch' extension from the Extensions "
                               "Manager, restart Slicer, and try again.") from None
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if not torchLogic.torchInstalled():
            options = {}
            try:   # older PyTorchUtils have no version requirement; the version is checked below anyway
                if "torchVersionRequirement" in inspect.signature(torchLogic.installTorch).parameters:
                    options["torchVersionRequirement"] = f">={minimum}"
            except (TypeError, ValueError):
                pass
            if torchLogic.installTorch(askConfirmation=True, **options) is None:
                raise RuntimeError(f"Femur U-Net needs PyTorch {minimum} or later; it was not installed.")
    try:
        import torch
    except ImportError as exc:
        raise RuntimeError(f"PyTorch is installed but cannot be imported ({exc}): reinstall it in the PyTorch "
                           "Utils module.") from None
    problem = torchVersionProblem(str(getattr(torch, "__version__", "")))
    if problem:
        raise RuntimeError(problem)


def protectedConstraintsFile() -> str:
    """A pip constraints file pinning Slicer's own numpy/SimpleITK (and the installed torch) to their versions."""
    from importlib.metadata import PackageNotFoundError, version
    lines = []
    for name in PROTECTED_DISTRIBUTIONS:
        try:
            lines.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            pass
    fd, path = tempfile.mkstemp(prefix="FemurUNet-constraints-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def ensurePythonRequirements(importNames=("torch",)):
    """Make the named imports available: torch via PyTorchUtils, others via pip after a confirmation."""
    if "torch" in importNames:
        ensureTorch()
    missing = [PIP_REQUIREMENTS[name] for name in importNames
               if name != "torch" and importlib.util.find_spec(name) is None]
    if not missing:
        return
    if not slicer.util.confirmOkCancelDisplay(
            "Femur U-Net needs these Python packages:\n\n" + "\n".join(missing) +
            "\n\nInstall them now? (Slicer's own numpy and SimpleITK are kept as they are.)",
            "Femur U-Net - install Python packages"):
        raise RuntimeError(f"missing Python packages: {', '.join(missing)}")
    constraints = protectedConstraintsFile()
    try:
        with slicer.util.WaitCursor():
            if pipInstallTakesConstraints():
                slicer.util.pip_install(missing, constraints=constraints)
            else:
                # Slicer < 5.12: pip gets a list as it is; a string would be split with POSIX shell rules, which
                # drop a Windows path's backslashes and break a path with spaces
                slicer.util.pip_install(missing + ["-c", constraints])
    finally:
        os.unlink(constraints)
    importlib.invalidate_caches()


def pipInstallTakesConstraints() -> bool:
    """Whether slicer.util.pip_install has the ``constraints`` keyword (Slicer 5.12 and later)."""
    try:
        parameters = inspect.signature(slicer.util.pip_install).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "constraints" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
