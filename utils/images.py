"""Sample images: listing, loading, the lab's preprocessing, and a labelled grid."""

import math
import struct
import zlib
from pathlib import Path

import matplotlib.pyplot as plt
import tensorflow as tf

from utils.errors import LabError
from utils.paths import IMAGES_DIR, project_path

IMAGE_SIZE = 224
# Refused before a single pixel is decoded: a PNG of 420 KB can claim 12000x12000 pixels (1.7 GB as
# floats). 4096x4096 decodes to 48 MiB of uint8.
MAX_IMAGE_SIDE = 4096
MAX_BATCH_IMAGES = 32  # encoded images per call of serving_preprocess
PNG_HEADER = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR"  # the signature, then IHDR's length and type
JPEG_SIGNATURE = b"\xff\xd8\xff"
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


def image_size(image_bytes):
    """[height, width] from a PNG's or JPEG's header, before any pixel is decoded (notebook 02)."""
    is_png = tf.strings.substr(image_bytes, 0, len(PNG_HEADER)) == PNG_HEADER
    is_jpeg = tf.strings.substr(image_bytes, 0, len(JPEG_SIGNATURE)) == JPEG_SIGNATURE
    known = tf.debugging.Assert(
        is_png | is_jpeg, ["Unknown image file format: send a JPEG or a PNG."]
    )

    def png_size():  # IHDR holds width, then height, big-endian, at bytes 16 to 23
        header = tf.strings.substr(image_bytes, 16, 8)
        return tf.reverse(tf.io.decode_raw(header, tf.int32, little_endian=False), [0])

    with tf.control_dependencies([known]):
        return tf.cond(is_png, png_size, lambda: tf.image.extract_jpeg_shape(image_bytes)[:2])


def png_of_zeros(side):
    """A PNG claiming side x side black RGB pixels: IHDR, then a zlib stream of zero rows."""

    def chunk(kind, data):
        checksum = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + checksum

    compressor = zlib.compressobj(9)
    row = bytes(1 + 3 * side)  # a filter byte, then RGB
    pixels = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)  # 8-bit RGB
    return PNG_HEADER[:8] + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def check_image_size(image_bytes):
    """An op that fails with InvalidArgument when the header claims more than MAX_IMAGE_SIDE a side."""
    size = image_size(image_bytes)
    message = tf.strings.format(
        f"Image of {{}}x{{}} pixels is over the limit of {MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE}: "
        "send a smaller image.", (size[1], size[0]))
    return tf.debugging.Assert(tf.reduce_all((size > 0) & (size <= MAX_IMAGE_SIDE)), [message])


def preprocess_image(image_bytes):
    """Check the header's size, decode, centre-crop to a square, resize to 224x224, scale to [0, 1].

    Pure TensorFlow ops, so the same function runs eagerly in Python and inside a serving signature's
    graph. Pixels stay uint8 until they are resized: floats only for the 224x224 result.
    """
    with tf.control_dependencies([check_image_size(image_bytes)]):
        image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    side = tf.minimum(height, width)
    image = tf.image.crop_to_bounding_box(image, (height - side) // 2, (width - side) // 2, side, side)
    image = tf.image.resize(image, [IMAGE_SIZE, IMAGE_SIZE]) / 255.0
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
