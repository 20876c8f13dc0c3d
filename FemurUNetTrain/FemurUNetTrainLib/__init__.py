"""FemurUNet training: export CT + labels as the seed's PNG pairs, augment like Keras, train the U-Net (pure Python)."""
from .augment import AugmentConfig
from .dataset import SliceDataset, load_dataset
from .export import export_arrays, export_files
from .train import TrainConfig, TrainProgress, TrainResult, train

__all__ = ["AugmentConfig", "SliceDataset", "load_dataset", "export_arrays", "export_files", "TrainConfig",
           "TrainProgress", "TrainResult", "train"]
