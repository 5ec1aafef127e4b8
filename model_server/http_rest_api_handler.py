"""TF Serving's HTTP/REST API (model_servers/http_rest_api_handler.cc, http_server.cc) on aiohttp.

Requests are translated from JSON and run by the same Predictor and classify/regress code as
gRPC's (predict: JSON straight to numpy arrays, no PredictRequest in between).

Every answer is JSON: results as TF Serving writes them, errors as {"error": message}
with TF Serving's HTTP status, including aiohttp's own (malformed HTTP, body too large)
and anything unexpected (500).
"""

import asyncio
import contextlib
import logging
import re
import time
from http import HTTPStatus
from urllib.parse import unquote

import grpc
from aiohttp import web, web_protocol, web_server
from google.protobuf import json_format
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     model_pb2, regression_pb2)

from model_server.classifier import run_classify
from model_server.get_model_metadata_impl import SIGNATURE_DEF_FIELD, get_model_metadata
from model_server.get_model_status_impl import get_model_status
from model_server.regressor import run_regress
from model_server.rest_json.json_tensor import (classification_json, error_json, examples_input_from_json,
                                                predict_request_from_json, predict_response_json,
                                                read_request_object, regression_json)
from model_server.status import ServingError, invalid_argument
from model_server.util import examples_request, signature_def

log = logging.getLogger("model_server.rest")  # the REST front end's name in the server log

# TF Serving's own URL grammar (http_rest_api_util.cc): matched case-insensitively, but
# ProcessRequest then compares the verb and "metadata" exactly.
PREDICTION_PATH = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)")
STATUS_PATH = re.compile(
    r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?")
JSON_HEADERS = {"Content-Type": "application/json"}
API_NAMES = {"predict": "Predict", "classify": "Classify", "regress": "Regress"}


def error_response(message, status):
    return web.Response(body=error_json(message), status=status, headers=JSON_HEADERS)


class JsonErrorRequestHandler(web_protocol.RequestHandler):
    """aiohttp's connection handler, answering its own errors (bad HTTP, handler crash) in JSON."""

    def handle_error(self, request, status=500, exc=None, message=None):
        super().handle_error(request, status, exc, message)  # logs; refuses once a response has started
        detail = f": {exc}" if exc is not None and status != 500 else ""
        response = error_response(f"{HTTPStatus(status).phrase}{detail}", status)
        response.force_close()
        return response


class JsonErrorServer(web_server.Server):
    """aiohttp's low-level server, with JsonErrorRequestHandler connections."""

    def __call__(self):
        return JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)


class RestRunner(web.AppRunner):
    """An AppRunner whose connections answer protocol errors in JSON."""

    async def _make_server(self):
        server = await super()._make_server()
        return JsonErrorServer(server.request_handler, request_factory=server.request_factory, loop=server._loop,
                               **server._kwargs)


def model_spec_from_url(name, version, label):
    spec = model_pb2.ModelSpec(name=unquote(name or ""))
    if version:
        try:
            spec.version.value = int(version)
        except ValueError:
            raise invalid_argument(f"Failed to convert version: {version} to numeric.") from None
    if label:
        spec.version_label = unquote(label)
    return spec


def proto_json(message):
    return json_format.MessageToJson(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True, indent=1)


def rest_signature_not_found(name):
    """The REST handler's error for a signature the version does not have (GetInfoMap)."""
    return invalid_argument(f'Serving signature name: "{name}" not found in signature def')


class HttpRestApiHandler:
    """Maps TF Serving's URLs onto the Predictor and the classify, regress, metadata and status calls,
    off the event loop."""

    def __init__(self, predictor, executor, max_body_bytes, timeout_ms=0, extra_routes=(), metrics=None):
        self.predictor = predictor
        self.metrics = metrics
        self.timeout_seconds = timeout_ms / 1000 if timeout_ms > 0 else None
        self.executor = executor
        self.max_body_bytes = max_body_bytes
        self.extra_routes = dict(extra_routes)

    def make_app(self):
        app = web.Application(client_max_size=self.max_body_bytes)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    def make_runner(self):
        return RestRunner(self.make_app(), access_log=None)

    async def handle(self, request):
        try:
            return await self._handle(request)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - every failure still answers JSON
            log.exception("Error handling %s %s", request.method, request.path)
            return error_response(f"{type(error).__name__}: {error}", 500)

    async def _handle(self, request):
        path = request.path
        if path in self.extra_routes and request.method == "GET":
            return await self.extra_routes[path](request)
        if request.content_length and request.content_length > self.max_body_bytes:
            return error_response(
                f"Request body of {request.content_length} bytes exceeds the limit of {self.max_body_bytes} bytes", 413)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return error_response(f"Request body exceeds the limit of {self.max_body_bytes} bytes", 413)
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        work = loop.run_in_executor(self.executor, self.dispatch, request.method, path, body)
        error = None
        try:
            payload = await asyncio.wait_for(work, self.timeout_seconds)
        except ServingError as raised:
            error = raised
        except asyncio.TimeoutError:
            error = ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        self._record(request.method, path, error, time.perf_counter() - started)
        if error is not None:
            return error_response(error.message, error.http_status)
        return web.Response(body=payload, headers=JSON_HEADERS)

    def _record(self, method, path, error, seconds):
        """request_count and request_latency for predict, classify and regress, as TF Serving records them."""
        match = PREDICTION_PATH.fullmatch(path) if method == "POST" else None
        if self.metrics is not None and match and match.group(4) in API_NAMES:
            status = "OK" if error is None else error.code.name
            self.metrics.record_request(unquote(match.group(1)), API_NAMES[match.group(4)], "REST", status, seconds)

    def dispatch(self, method, path, body):
        """Serve one request; returns the JSON body or raises ServingError."""
        malformed = invalid_argument(f"Malformed request: {method} {path}")
        if method == "POST" and (match := PREDICTION_PATH.fullmatch(path)):
            name, version, label, verb = match.groups()
            spec = model_spec_from_url(name, version, label)
            if verb not in API_NAMES:
                raise malformed
            return getattr(self, verb)(spec, body)
        if method == "GET" and (match := STATUS_PATH.fullmatch(path)):
            name, version, label, subresource = match.groups()
            spec = model_spec_from_url(name, version, label)
            if not name:
                raise invalid_argument("Missing model name in request.")
            return self.metadata(spec) if subresource == "metadata" else self.status(spec)
        raise malformed

    def predict(self, spec, body):
        """ProcessPredictRequest: the body's JSON errors first, then the model's, as in TF Serving; one
        handle on the version from the signature lookup to the run."""
        with contextlib.ExitStack() as stack:
            servables = []

            def signature_inputs(signature_name):
                if not servables:
                    servables.append(stack.enter_context(self.predictor.servable_handle(spec)))
                _, signature = signature_def(servables[0], signature_name, rest_signature_not_found)
                return dict(signature.inputs)

            signature_name, inputs, request_format = predict_request_from_json(body, signature_inputs)
            outputs = self.predictor.predict(servables[0], signature_name, inputs)
        return predict_response_json(outputs, request_format)

    def classify(self, spec, body):
        request = self._examples_request_from_json(spec, body, classification_pb2.ClassificationRequest)
        response = examples_request(run_classify, self.predictor.server_core, self.predictor.runner, request,
                                    classification_pb2.ClassificationResponse())
        return classification_json(response.result)

    def regress(self, spec, body):
        request = self._examples_request_from_json(spec, body, regression_pb2.RegressionRequest)
        response = examples_request(run_regress, self.predictor.server_core, self.predictor.runner, request,
                                    regression_pb2.RegressionResponse())
        return regression_json(response.result)

    @staticmethod
    def _examples_request_from_json(spec, body, request_class):
        """FillClassifyRegressRequestFromJson: a request from a body with `examples` (and `context`)."""
        document, signature_name = read_request_object(body)
        # A proto string holds text: a name that is not UTF-8 names no signature either way.
        spec.signature_name = signature_name.encode("utf-8", "replace").decode()
        return request_class(model_spec=spec, input=examples_input_from_json(document))

    def status(self, spec):
        request = get_model_status_pb2.GetModelStatusRequest(model_spec=spec)
        response = get_model_status(self.predictor.server_core, request, get_model_status_pb2.GetModelStatusResponse())
        return proto_json(response).encode()

    def metadata(self, spec):
        request = get_model_metadata_pb2.GetModelMetadataRequest(model_spec=spec, metadata_field=[SIGNATURE_DEF_FIELD])
        response = get_model_metadata(self.predictor.server_core, request,
                                      get_model_metadata_pb2.GetModelMetadataResponse())
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata[SIGNATURE_DEF_FIELD].Unpack(signature_map)
        return (f'{{\n"model_spec":{proto_json(response.model_spec)},\n'
                f'"metadata": {{"signature_def": {proto_json(signature_map)}}}\n}}\n').encode()
