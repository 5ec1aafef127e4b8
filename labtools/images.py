"""`python -m labtools images`: write the lab's sample photos to images/ as JPEG, from scikit-image's bundled data.

The photos are public domain or CC0 (see images/README.md, which names each one).
"""

import argparse

import PIL.Image
import skimage.data

from utils.paths import IMAGES_DIR

# File name -> scikit-image data function. Order is the lab's display order.
SAMPLES = {
    "chelsea.jpg": skimage.data.chelsea,
    "coffee.jpg": skimage.data.coffee,
    "astronaut.jpg": skimage.data.astronaut,
    "rocket.jpg": skimage.data.rocket,
}


def main(argv=None):
    argparse.ArgumentParser(prog="python -m labtools images", description=__doc__).parse_args(argv)
    IMAGES_DIR.mkdir(parents=True, exist_ok=True)
    for file_name, load in SAMPLES.items():
        PIL.Image.fromarray(load()).save(IMAGES_DIR / file_name, quality=92)
        print(f"wrote {IMAGES_DIR / file_name}")
