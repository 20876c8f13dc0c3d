"""The engine's defaults, torch-free (the training options and Slicer module files read them)."""

DEFAULT_WINDOW = (400.0, 2000.0)   # centre, width in HU: bone window with soft tissue still visible
DEFAULT_INPUT_SIZE = 256           # model input side in pixels (the seed's 256 x 256)
MAX_FIELD_MM = 2000.0              # the largest minimum field of view a model or an option may name (0: off)
MAX_SMOOTH_Z_MM = 50.0             # the largest sigma along the slice axis (a femoral head's radius is ~25 mm)
# inference settings a model's metadata may name (None in segment_volume: the model's, else 0): key -> (most, what)
MODEL_SETTINGS_MM = {"min_field_mm": (MAX_FIELD_MM, "minimum field of view"),
                     "smooth_z_mm": (MAX_SMOOTH_Z_MM, "smoothing along the slice axis")}
BONE_COLOR = [0.945, 0.839, 0.569]   # Slicer's "bone" colour (241, 214, 145): every femur label's default
CONFIRM_FRACTION = 0.9             # --second-opinion: the share of each piece it must label (MODEL_HISTORY, session 34)
GATE_THRESHOLD = 0.3               # the level gate: a scan's labels go when no slice reaches this (MODEL_HISTORY)
