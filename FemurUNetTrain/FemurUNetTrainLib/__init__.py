"""FemurUNet training: export CT + labels as the seed's PNG pairs, augment like Keras, train the U-Net (pure Python).

Importing the package is light (names load on first use), so ``FemurUNetTrainLib.options``, ``.history`` and
``.process`` serve Slicer's module file without PyTorch.
"""
import importlib

# public name -> the submodule that defines it (imported when the name is first used)
_LAZY = {"AugmentConfig": "options", "IntensityConfig": "options", "TrainConfig": "options",
         "SliceDataset": "dataset", "load_dataset": "dataset", "export_arrays": "export", "export_files": "export",
         "TrainProgress": "train", "TrainResult": "train", "train": "train"}

__all__ = sorted(_LAZY)


def __getattr__(name):
    submodule = _LAZY.get(name)
    if submodule is None:   # AttributeError, so that `from FemurUNetTrainLib import mrml` imports the submodule
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{submodule}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
