"""Replay a version's warmup requests at load time, as TF Serving does (saved_model_warmup.md).

`<version>/assets.extra/tf_serving_warmup_requests` is a TFRecord file of PredictionLogs.
Each record runs `num_request_iterations` times on the freshly loaded version, before
it becomes AVAILABLE, so the first real request does not pay for lazy initialisation.
"""

import logging
import time
from pathlib import Path

import grpc
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow_serving.apis import (classification_pb2, inference_pb2, predict_pb2, prediction_log_pb2,
                                     regression_pb2)

from model_server.core import check_multi_inference_tasks
from model_server.status import ServingError, invalid_argument

log = logging.getLogger("model_server")

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000


def _replay(core, servable, prediction_log):
    kind = prediction_log.WhichOneof("log_type")
    if kind == "predict_log":
        core.predict_on(servable, prediction_log.predict_log.request, predict_pb2.PredictResponse())
    elif kind == "classify_log":
        core.classify_on(servable, prediction_log.classify_log.request, classification_pb2.ClassificationResponse())
    elif kind == "regress_log":
        core.regress_on(servable, prediction_log.regress_log.request, regression_pb2.RegressionResponse())
    elif kind == "multi_inference_log":
        check_multi_inference_tasks(prediction_log.multi_inference_log.request)
        core.multi_inference_on(servable, prediction_log.multi_inference_log.request,
                                inference_pb2.MultiInferenceResponse())
    else:
        raise ServingError(grpc.StatusCode.UNIMPLEMENTED, f"Unsupported log_type for warmup: {kind}")


def run_warmup(core, servable, iterations=1, metrics=None):
    """Replay the warmup file of `servable` (if any); raises ServingError as TF Serving fails the load."""
    warmup_path = Path(servable.path) / WARMUP_FILE
    if not warmup_path.exists():
        log.info("No warmup data file found at %s", warmup_path)
        return 0
    log.info("Starting to read warmup data for model at %s", warmup_path)
    started = time.perf_counter()
    records, status = 0, "OK"
    try:
        for record in tf.data.TFRecordDataset(str(warmup_path)).as_numpy_iterator():
            try:
                prediction_log = prediction_log_pb2.PredictionLog.FromString(record)
            except DecodeError:
                raise invalid_argument(f"Failed to parse warmup record: {record!r} from {warmup_path}") from None
            for _ in range(max(iterations, 1)):
                _replay(core, servable, prediction_log)
            records += 1
            if records > MAX_WARMUP_RECORDS:
                raise invalid_argument(f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) "
                                       f"at {warmup_path}")
    except tf.errors.DataLossError as error:
        status = "DATA_LOSS"
        raise ServingError(grpc.StatusCode.DATA_LOSS,
                           f"{error.message}. Please verify your warmup data is in TFRecord format.") from None
    except ServingError as error:
        status = error.code.name
        raise
    finally:
        elapsed_micros = int((time.perf_counter() - started) * 1e6)
        if metrics is not None:
            metrics.warmup_latency.labels(servable.path, status).observe(elapsed_micros)
    log.info("Finished reading warmup data for model at %s. Number of warmup records read: %d. "
             "Elapsed time (microseconds): %d.", warmup_path, records, elapsed_micros)
    return records
