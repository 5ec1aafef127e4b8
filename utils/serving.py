"""The serving module and its export (both introduced in notebooks 02 and 03).

The notebooks show this code cell for cell; tests/test_notebook_code.py checks
that the copies here stay identical to the notebooks' cells.
"""

import os
import shutil
import tempfile
from pathlib import Path

import tensorflow as tf

from utils.images import IMAGE_SIZE, MAX_BATCH_IMAGES, preprocess_image


class ServingModule(tf.Module):
    """An ImageNet classifier with two serving signatures (notebook 02)."""

    def __init__(self, model, labels, top_k=5):
        super().__init__()
        self.model = model
        self.labels = tf.constant(labels)
        self.top_k = top_k

    @tf.function(input_signature=[tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3], tf.float32)])
    def __call__(self, x):
        """serving_default: float images in [0, 1] -> 1001 logits."""
        return self.model(x)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def predict_labels(self, raw_images):
        """serving_preprocess: encoded JPEG/PNG bytes -> top-k labels and probabilities."""
        batch_limit = tf.debugging.Assert(
            tf.size(raw_images) <= MAX_BATCH_IMAGES,
            [f"A request may carry at most {MAX_BATCH_IMAGES} images: split the batch."],
        )
        with tf.control_dependencies([batch_limit]):
            images = tf.map_fn(  # preprocess_image refuses an image too large before decoding it
                preprocess_image,
                raw_images,
                fn_output_signature=tf.TensorSpec([IMAGE_SIZE, IMAGE_SIZE, 3], tf.float32),
            )
        probabilities = tf.nn.softmax(self.model(images))
        top = tf.math.top_k(probabilities, k=self.top_k)
        return {"labels": tf.gather(self.labels, top.indices), "probabilities": top.values}


def export_servable(module, models_dir, model_name, version):
    """Save `module` as `models_dir/model_name/version`, atomically (notebook 03)."""
    model_dir = Path(models_dir) / model_name
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".export-", dir=model_dir)
    signatures = {
        "serving_default": module.__call__,
        "serving_preprocess": module.predict_labels,
    }
    try:
        tf.saved_model.save(module, staging, signatures=signatures)
        target = model_dir / str(version)
        if target.exists():
            shutil.rmtree(target)
        os.rename(staging, target)  # a server polling model_dir never sees half a version
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
