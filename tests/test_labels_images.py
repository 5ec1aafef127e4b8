"""Label file, sample images and request payloads."""

import hashlib
import json
import base64

import pytest
import tensorflow as tf

from conftest import REFERENCE_DIR, shared_reference
from labtools.labels import imagenet_labels
from labtools.payloads import REQUEST_BODY_IMAGE, REQUEST_BODY_PATH, make_request_body
from utils.errors import LabError
from utils.images import get_image_list, preprocess_image, read_image_bytes
from utils.labels import load_labels
from utils.paths import LABELS_PATH

TF_LABELS_SHA256 = "536feacc519de3d418de26b2effb4d75694a8c4c0063e36499a46fa8061e2da9"


def test_label_file_is_byte_identical_to_tensorflows():
    data = LABELS_PATH.read_bytes()
    assert hashlib.sha256(data).hexdigest() == TF_LABELS_SHA256
    assert b"\r" not in data


def test_label_file_equals_the_reference_copy():
    """Optional cross-check: the reference copy beside the project's own checkouts (the hash above is the rule)."""
    assert LABELS_PATH.read_bytes() == shared_reference(REFERENCE_DIR / "ImageNetLabels.txt").read_bytes()


def test_label_script_regenerates_the_committed_file():
    labels = imagenet_labels()
    assert ("\n".join(labels) + "\n").encode() == LABELS_PATH.read_bytes()
    assert labels[0] == "background" and labels[-1] == "toilet tissue" and len(labels) == 1001


def test_missing_label_file_is_one_clear_sentence(tmp_path):
    with pytest.raises(LabError, match="Label file .* is missing"):
        load_labels(tmp_path / "nope.txt")


def test_images_are_listed_in_a_stable_order():
    names = [p.name for p in get_image_list()]
    assert names == sorted(names) and {"chelsea.jpg", "coffee.jpg", "astronaut.jpg", "rocket.jpg"} <= set(names)


def test_missing_or_empty_image_directory_is_one_clear_sentence(tmp_path):
    with pytest.raises(LabError, match="does not exist"):
        get_image_list(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(LabError, match="has no .jpg"):
        get_image_list(tmp_path)


@pytest.mark.parametrize("encode", [tf.io.encode_jpeg, tf.io.encode_png])
def test_preprocess_crops_resizes_and_scales(encode):
    wide = tf.concat([tf.zeros([60, 20, 3], tf.uint8), tf.fill([60, 60, 3], tf.constant(255, tf.uint8)),
                      tf.zeros([60, 20, 3], tf.uint8)], axis=1)  # black | white square | black
    image = preprocess_image(encode(wide))
    assert image.shape == (224, 224, 3) and image.dtype == tf.float32
    # The centre crop keeps only the white square.
    assert float(tf.reduce_min(image)) > 0.95 and float(tf.reduce_max(image)) <= 1.0


def test_preprocess_rejects_non_images():
    with pytest.raises(tf.errors.InvalidArgumentError, match="Unknown image file format"):
        preprocess_image(tf.constant(b"not an image"))


def test_request_body_is_the_original_labs_form():
    body = json.loads(REQUEST_BODY_PATH.read_text())
    assert body == make_request_body([REQUEST_BODY_IMAGE])
    assert body["signature_name"] == "serving_preprocess" and len(body["instances"]) == 1
    assert base64.b64decode(body["instances"][0]["b64"]) == read_image_bytes(REQUEST_BODY_IMAGE)
