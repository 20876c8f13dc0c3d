"""FemurUNet training: export CT + labels as the seed's PNG pairs, augment like Keras, train the U-Net (pure Python).

Importing the package is light (names load on first use), so ``FemurUNetTrainLib.options``, ``.history`` and
``.process`` serve Slicer's module file without PyTorch.
"""
from FemurUNetLib.lazy import lazy_exports

# public name -> the submodule that defines it (imported when the name is first used)
_LAZY = {"AugmentConfig": "options", "IntensityConfig": "options", "TrainConfig": "options",
         "SliceDataset": "dataset", "load_dataset": "dataset", "export_arrays": "export", "export_files": "export",
         "TrainProgress": "train", "TrainResult": "train", "train": "train"}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
