"""Write the lab's sample photos to images/ as JPEG, from scikit-image's bundled data.

The photos are public domain or CC0 (see images/README.md, which names each one).

    python scripts/make_images.py
"""

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


def main():
    IMAGES_DIR.mkdir(parents=True, exist_ok=True)
    for file_name, load in SAMPLES.items():
        PIL.Image.fromarray(load()).save(IMAGES_DIR / file_name, quality=92)
        print(f"wrote {IMAGES_DIR / file_name}")


if __name__ == "__main__":
    main()
