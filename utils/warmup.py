"""Warmup records for TF Serving: `<version>/assets.extra/tf_serving_warmup_requests` (notebook 06)."""

from pathlib import Path

import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from model_server.contract import MAX_WARMUP_RECORDS, WARMUP_FILE
from utils.errors import LabError
from utils.images import load_batch, read_image_bytes
from utils.payloads import PREPROCESS_SIGNATURE, predict_request


def lab_warmup_requests(model_name, image_paths):
    """One PredictRequest per signature and image: the requests the lab's clients send."""
    requests = []
    for path in image_paths:
        requests.append(predict_request(model_name, PREPROCESS_SIGNATURE, {"raw_images": [read_image_bytes(path)]}))
        requests.append(predict_request(model_name, "serving_default", {"x": load_batch([path]).numpy()}))
    return requests


def write_warmup_requests(export_dir, requests):
    """Write PredictionLogs of `requests` (Predict, Classify, Regress or MultiInference) as a TFRecord file."""
    if len(requests) > MAX_WARMUP_RECORDS:
        raise LabError(f"{len(requests)} warmup records: TF Serving accepts at most {MAX_WARMUP_RECORDS}.")
    path = Path(export_dir) / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for request in requests:
            writer.write(prediction_log(request).SerializeToString())
    return path


def prediction_log(request):
    """Wrap a request in the PredictionLog field that matches its type."""
    kinds = {"PredictRequest": "predict_log", "ClassificationRequest": "classify_log",
             "RegressionRequest": "regress_log", "MultiInferenceRequest": "multi_inference_log"}
    kind = kinds.get(type(request).__name__)
    if kind is None:
        raise LabError(f"No PredictionLog type for {type(request).__name__}.")
    log = prediction_log_pb2.PredictionLog()
    getattr(log, kind).request.CopyFrom(request)
    return log
