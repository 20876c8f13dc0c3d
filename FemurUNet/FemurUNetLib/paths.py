"""Where the engine's shipped files are (no torch: Slicer module files import it at startup)."""
from pathlib import Path

MODELS_DIR = Path(__file__).with_name("models")
DEFAULT_MODEL_PATH = MODELS_DIR / "femurunet_demo_b16.pt"   # the demo model
DEFAULT_GATE_PATH = MODELS_DIR / "femurunet_level_gate.pt"  # the level gate that goes with it (gate H)
