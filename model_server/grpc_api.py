"""TF Serving's gRPC services (PredictionService, ModelService) over the shared core."""

import logging
import time

import grpc
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     inference_pb2, model_management_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc, regression_pb2)

from model_server.cli import DEFAULT_MAX_GRPC_REQUEST_BYTES
from model_server.status import ServingError, invalid_argument

log = logging.getLogger("model_server")
# TF Serving lifts gRPC's 4 MB default message size (a batch of 32 float images is 19 MB); so do the
# lab's clients, with these same options.
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]


class OneLineDeserializationErrors(logging.Filter):
    """grpcio answers bytes that do not parse as the request INTERNAL "Exception deserializing request!"
    (as C++ gRPC, hence TF Serving, answers INTERNAL) and logs a traceback: log one line instead."""

    def filter(self, record):
        if record.exc_info and record.getMessage().startswith("Exception deserializing"):
            record.msg, record.args = f"{record.getMessage()} {record.exc_info[1]}", ()
            record.exc_info = record.exc_text = None
        return True


_DESERIALIZATION_ERRORS = OneLineDeserializationErrors()


def as_serving_error(error, what):
    """Any exception from a handler -> a status: RESOURCE_EXHAUSTED for MemoryError, else INTERNAL.

    Logged in one line: a failure our own checks did not foresee, not a client's mistake.
    """
    if isinstance(error, ServingError):
        return error
    log.error("%s failed: %s: %s", what, type(error).__name__, error)
    if isinstance(error, MemoryError):
        return ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{what} ran out of memory")
    return ServingError(grpc.StatusCode.INTERNAL, f"{what} failed: {type(error).__name__}: {error}")


def _serve(call, request, response, context, metrics=None, api=None):
    started = time.perf_counter()
    status = "OK"
    try:
        return call(request, response)
    except Exception as error:  # noqa: BLE001 - every failure becomes a status, never UNKNOWN
        error = as_serving_error(error, api or type(request).__name__)
        status = error.code.name
        context.abort(error.code, error.message)
    finally:
        if metrics is not None and api is not None:
            metrics.record_request(request.model_spec.name, api, "GRPC", status, time.perf_counter() - started)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, core, metrics=None):
        self.core = core
        self.metrics = metrics

    def Predict(self, request, context):
        return _serve(self.core.predict, request, predict_pb2.PredictResponse(), context, self.metrics, "Predict")

    def Classify(self, request, context):
        return _serve(self.core.classify, request, classification_pb2.ClassificationResponse(), context,
                      self.metrics, "Classify")

    def Regress(self, request, context):
        return _serve(self.core.regress, request, regression_pb2.RegressionResponse(), context,
                      self.metrics, "Regress")

    def MultiInference(self, request, context):
        # TF Serving records no request metrics for MultiInference.
        return _serve(self.core.multi_inference, request, inference_pb2.MultiInferenceResponse(), context)

    def GetModelMetadata(self, request, context):
        return _serve(self.core.metadata, request, get_model_metadata_pb2.GetModelMetadataResponse(), context)


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, core, reload_config):
        self.core = core
        self.reload_config = reload_config

    def GetModelStatus(self, request, context):
        return _serve(self.core.status, request, get_model_status_pb2.GetModelStatusResponse(), context)

    def HandleReloadConfigRequest(self, request, context):
        """As TF Serving: a refused config fails the call with its status (and logs it)."""
        try:
            if request.config.WhichOneof("config") != "model_config_list":
                raise invalid_argument("ServerModelConfig type not supported by HandleReloadConfigRequest. "
                                       "Only ModelConfigList is currently supported")
            self.reload_config(request.config)
        except Exception as error:  # noqa: BLE001 - every failure becomes a status, never UNKNOWN
            error = as_serving_error(error, "HandleReloadConfigRequest")
            log.error("ReloadConfig failed: %s", error.message)
            context.abort(error.code, error.message)
        response = model_management_pb2.ReloadConfigResponse()
        response.status.SetInParent()  # TF Serving always sets the status, OK included
        return response


def server_options(channel_arguments=()):
    """The server's channel arguments: no send limit, requests up to DEFAULT_MAX_GRPC_REQUEST_BYTES,
    each overridden by --grpc_channel_arguments as in TF Serving."""
    options = dict(CHANNEL_OPTIONS)
    options["grpc.max_receive_message_length"] = DEFAULT_MAX_GRPC_REQUEST_BYTES
    options.update(channel_arguments)
    return list(options.items())


def make_grpc_server(core, reload_config, executor, channel_arguments=(), metrics=None):
    logging.getLogger("grpc._common").addFilter(_DESERIALIZATION_ERRORS)
    server = grpc.server(executor, options=server_options(channel_arguments))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(core, metrics), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(core, reload_config), server)
    return server
