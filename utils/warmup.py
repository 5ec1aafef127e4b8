"""Warmup records for TF Serving: `<version>/assets.extra/tf_serving_warmup_requests` (notebook 06).

`write_warmup_requests` is shown in notebook 06 (section 1); tests/test_notebook_code.py keeps the two
copies identical.
"""

from pathlib import Path

import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from model_server.contract import MAX_WARMUP_RECORDS, WARMUP_FILE
from utils.errors import LabError
from utils.images import load_batch, read_image_bytes
from utils.payloads import PREPROCESS_SIGNATURE, predict_request

# The PredictionLog field that holds each kind of request.
PREDICTION_LOG_FIELDS = {"PredictRequest": "predict_log", "ClassificationRequest": "classify_log",
                         "RegressionRequest": "regress_log", "MultiInferenceRequest": "multi_inference_log"}


def lab_warmup_requests(model_name, image_paths):
    """One PredictRequest per signature and image: the requests the lab's clients send."""
    requests = []
    for path in image_paths:
        requests.append(predict_request(model_name, PREPROCESS_SIGNATURE, {"raw_images": [read_image_bytes(path)]}))
        requests.append(predict_request(model_name, "serving_default", {"x": load_batch([path]).numpy()}))
    return requests


def write_warmup_requests(export_dir, requests):
    """Write each request as one PredictionLog record of a TFRecord file: the warmup file."""
    if len(requests) > MAX_WARMUP_RECORDS:
        raise LabError(
            f"{len(requests)} warmup records: TF Serving accepts at most {MAX_WARMUP_RECORDS}."
        )
    path = Path(export_dir) / WARMUP_FILE  # assets.extra/tf_serving_warmup_requests
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for request in requests:
            log = prediction_log_pb2.PredictionLog()
            field = PREDICTION_LOG_FIELDS.get(type(request).__name__)  # "predict_log" for a Predict
            if field is None:
                raise LabError(f"No PredictionLog type for {type(request).__name__}.")
            getattr(log, field).request.CopyFrom(request)
            writer.write(log.SerializeToString())
    return path


def prediction_log(request):
    """Wrap a request in the PredictionLog field that matches its type."""
    field = PREDICTION_LOG_FIELDS.get(type(request).__name__)
    if field is None:
        raise LabError(f"No PredictionLog type for {type(request).__name__}.")
    log = prediction_log_pb2.PredictionLog()
    getattr(log, field).request.CopyFrom(request)
    return log
