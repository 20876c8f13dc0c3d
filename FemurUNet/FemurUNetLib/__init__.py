"""FemurUNet engine: femur segmentation in CT with the seed's 2D U-Net (pure Python, no Slicer imports).

Importing the package is light: the public names below are loaded on first use, so ``import FemurUNetLib`` (and
``FemurUNetLib.errors``, ``FemurUNetLib.paths``) work without PyTorch, as Slicer's module files need at startup.
"""
from .lazy import lazy_exports

__version__ = "0.1.0"

# public name -> the submodule that defines it (imported when the name is first used)
_LAZY = {
    "Cancelled": "errors", "FemurUNetError": "errors",
    "Geometry": "geometry", "Reorientation": "geometry",
    "SegmentationResult": "inference", "segment_volume": "inference",
    "UNet2D": "model", "count_parameters": "model", "dice_coefficient": "model", "dice_loss": "model",
    "DEFAULT_MODEL_PATH": "paths", "load_model": "modelfile", "save_model": "modelfile",
    "DEFAULT_INPUT_SIZE": "defaults", "DEFAULT_WINDOW": "defaults",
    "read_volume": "volume_io", "write_labelmap": "volume_io",
}

__all__ = ["Cancelled", "FemurUNetError", "Geometry", "Reorientation", "SegmentationResult", "segment_volume",
           "UNet2D", "count_parameters", "dice_coefficient", "dice_loss", "DEFAULT_MODEL_PATH", "load_model",
           "save_model", "DEFAULT_INPUT_SIZE", "DEFAULT_WINDOW", "read_volume", "write_labelmap", "import_keras"]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)


def import_keras(path, window=None, threshold=None):
    """Load a seed-style Keras .hdf5/.h5 U-Net as a UNet2D (h5py only, no TensorFlow)."""
    from .keras_import import import_keras as _import_keras
    return _import_keras(path, window=window, threshold=threshold)
