"""FemurUNet engine: femur segmentation in CT with the seed's 2D U-Net (pure Python, no Slicer imports)."""
from .errors import Cancelled, FemurUNetError
from .geometry import Geometry, Reorientation
from .inference import SegmentationResult, segment_volume
from .model import UNet2D, count_parameters, dice_coefficient, dice_loss
from .modelfile import DEFAULT_MODEL_PATH, load_model, save_model
from .preprocess import DEFAULT_INPUT_SIZE, DEFAULT_WINDOW
from .volume_io import read_volume, write_labelmap

__version__ = "0.1.0"
__all__ = ["Cancelled", "FemurUNetError", "Geometry", "Reorientation", "SegmentationResult", "segment_volume",
           "UNet2D", "count_parameters", "dice_coefficient", "dice_loss", "DEFAULT_MODEL_PATH", "load_model",
           "save_model", "DEFAULT_INPUT_SIZE", "DEFAULT_WINDOW", "read_volume", "write_labelmap", "import_keras"]


def import_keras(path, window=None, threshold=None):
    """Load a seed-style Keras .hdf5/.h5 U-Net as a UNet2D (h5py only, no TensorFlow)."""
    from .keras_import import import_keras as _import_keras
    return _import_keras(path, window=window, threshold=threshold)
