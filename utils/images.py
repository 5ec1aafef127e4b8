"""Sample images: listing, loading, the lab's preprocessing, and a labelled grid."""

import math
from pathlib import Path

import matplotlib.pyplot as plt
import tensorflow as tf

from utils.errors import LabError
from utils.paths import IMAGES_DIR, project_path

IMAGE_SIZE = 224
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def get_image_list(image_dir=IMAGES_DIR):
    """JPEG and PNG files in `image_dir`, sorted by name (a stable order)."""
    image_dir = project_path(image_dir)
    if not image_dir.is_dir():
        raise LabError(f"Image directory {image_dir} does not exist: check the `image_dir` parameter.")
    paths = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise LabError(f"Image directory {image_dir} has no .jpg, .jpeg or .png files.")
    return paths


def read_image_bytes(path):
    """The encoded bytes of an image file, exactly as a client would send them."""
    return Path(path).read_bytes()


def preprocess_image(image_bytes):
    """Decode JPEG/PNG bytes, centre-crop to a square, resize to 224x224, scale to [0, 1].

    Pure TensorFlow ops, so the same function runs eagerly in Python and inside
    a serving signature's graph.
    """
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    side = tf.minimum(height, width)
    image = tf.image.crop_to_bounding_box(image, (height - side) // 2, (width - side) // 2, side, side)
    image = tf.image.convert_image_dtype(image, tf.float32)
    image = tf.image.resize(image, [IMAGE_SIZE, IMAGE_SIZE])
    return tf.clip_by_value(image, 0.0, 1.0)


def load_batch(paths):
    """A float32 batch [N, 224, 224, 3] of the images at `paths`."""
    return tf.stack([preprocess_image(read_image_bytes(p)) for p in paths])


def show_image(images, titles=None, columns=4, size=3.0):
    """Show one image or a list of images in a grid, each with an optional title."""
    if not isinstance(images, (list, tuple)):
        images, titles = [images], None if titles is None else [titles]
    titles = titles or [""] * len(images)
    columns = min(columns, len(images))
    rows = math.ceil(len(images) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(size * columns, size * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, title in zip(axes.flat, images, titles):
        axis.imshow(image)
        axis.set_title(title, fontsize=9)
    figure.tight_layout()
    plt.show()
