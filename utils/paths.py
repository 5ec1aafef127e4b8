"""Where the lab's files live. Everything generated goes under build/ (gitignored)."""

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LABELS_PATH = PROJECT_ROOT / "labels" / "ImageNetLabels.txt"
IMAGES_DIR = PROJECT_ROOT / "images"
PAYLOADS_DIR = PROJECT_ROOT / "payloads"
BUILD_DIR = PROJECT_ROOT / "build"


def project_path(path):
    """Resolve a path given relative to the project root (absolute paths pass through)."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


def cache_dir():
    """Download and conversion cache: $LAB_CACHE_DIR if set, else build/cache."""
    return project_path(os.environ.get("LAB_CACHE_DIR", BUILD_DIR / "cache"))
