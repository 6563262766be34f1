"""mbgen: MobileNet-family models to bit-exact int8 C for Cortex-M microcontrollers."""

from pathlib import Path

__version__ = "0.1.0"

# templates/, targets/ and firmware/ live at the top of the source tree (installed editable).
PROJECT_ROOT = Path(__file__).resolve().parent.parent
TEMPLATES_DIR = PROJECT_ROOT / "templates"
TARGETS_DIR = PROJECT_ROOT / "targets"
FIRMWARE_DIR = PROJECT_ROOT / "firmware"
