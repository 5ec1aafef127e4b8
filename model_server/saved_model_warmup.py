"""Replay a version's warmup requests at load time (servables/tensorflow/saved_model_warmup.cc).

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

from model_server.classifier import run_classify
from model_server.contract import MAX_WARMUP_RECORDS, WARMUP_FILE
from model_server.multi_inference import check_tasks, multi_inference_on
from model_server.regressor import run_regress
from model_server.status import ServingError, invalid_argument
from model_server.util import run_examples_request

log = logging.getLogger("model_server")


def _replay(predictor, servable, prediction_log):
    """One PredictionLog's request, run as a request of its kind runs."""
    kind = prediction_log.WhichOneof("log_type")
    runner = predictor.runner
    if kind == "predict_log":
        predictor.predict_request_on(servable, prediction_log.predict_log.request, predict_pb2.PredictResponse())
    elif kind == "classify_log":
        run_examples_request(run_classify, runner, servable, prediction_log.classify_log.request,
                             classification_pb2.ClassificationResponse())
    elif kind == "regress_log":
        run_examples_request(run_regress, runner, servable, prediction_log.regress_log.request,
                             regression_pb2.RegressionResponse())
    elif kind == "multi_inference_log":
        check_tasks(prediction_log.multi_inference_log.request)
        multi_inference_on(runner, servable, prediction_log.multi_inference_log.request,
                           inference_pb2.MultiInferenceResponse())
    else:
        raise ServingError(grpc.StatusCode.UNIMPLEMENTED, f"Unsupported log_type for warmup: {kind}")


def run_warmup(predictor, servable, iterations=1, metrics=None):
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
                _replay(predictor, servable, prediction_log)
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
