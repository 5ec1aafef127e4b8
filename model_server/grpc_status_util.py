"""gRPC answers as TF Serving gives them (model_servers/grpc_status_util.cc): every failure a status
with its canonical code, never UNKNOWN; request metrics recorded per call."""

import logging
import time

import grpc

from model_server.status import ServingError

log = logging.getLogger("model_server")


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


def serve_call(call, request, response, context, metrics=None, api=None):
    """`call(request, response)`, a failure aborting the RPC with its status; request_count and
    request_latency recorded under `api` (None: not recorded)."""
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
