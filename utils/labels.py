"""ImageNet label names (labels/ImageNetLabels.txt, made by `python -m labtools labels`)."""

from utils.errors import LabError
from utils.paths import LABELS_PATH


def load_labels(path=LABELS_PATH):
    """The 1001 ImageNet label names, index 0 = 'background'."""
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise LabError(f"Label file {path} is missing: run `python -m labtools labels`.") from None
