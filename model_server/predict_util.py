"""Predict on a loaded version (servables/tensorflow/predict_util.cc and predictor.cc).

`Predictor.predict` is the one entry REST and gRPC reach once each has translated its request
into numpy arrays (gRPC: TensorProtos; REST: JSON) and holds the version's handle.
`SignatureRunner` is the Session that predict, classify and regress run a signature on.
"""

import time

import tensorflow as tf

from model_server.contract import DEFAULT_MAX_REQUEST_TENSOR_ELEMENTS
from model_server.status import ServingError, failed_precondition, invalid_argument
from model_server.tensors import dtype_name, tensor_to_proto, tensors_from_protos
from model_server.util import fill_model_spec, signature_def


def predict_signature_not_found(name):
    """RunPredict's error for a signature the version does not have."""
    return failed_precondition(f'Serving signature key "{name}" not found.')


class SignatureRunner:
    """Session::Run for a signature whose inputs are checked: through the batcher when batching is on,
    TensorFlow errors as their status, runtime latency recorded under `api` (None: not recorded)."""

    def __init__(self, batcher=None, metrics=None):
        self.batcher = batcher
        self.metrics = metrics

    def run(self, servable, signature_name, inputs, output_filter=(), api="Predict"):
        """{key: array} -> {key: array}; `signature_name` is resolved (never '')."""
        started = time.perf_counter()
        try:
            if self.batcher is not None:
                outputs = self.batcher.run(servable, signature_name, inputs, tuple(output_filter))
            else:
                outputs = servable.bundle.run(signature_name, inputs, output_filter)
        except tf.errors.OpError as error:
            raise ServingError.from_tf_error(error) from None
        if self.metrics is not None and api is not None:
            latency_micros = (time.perf_counter() - started) * 1e6
            self.metrics.runtime_latency.labels(servable.name, api, "TF1").observe(latency_micros)
        return outputs


class Predictor:
    """TensorflowPredictor: Predict on numpy arrays (`predict`) or on TF Serving's protos."""

    def __init__(self, server_core, runner, max_tensor_elements=DEFAULT_MAX_REQUEST_TENSOR_ELEMENTS,
                 tensor_content=False):
        self.server_core = server_core
        self.runner = runner
        self.max_tensor_elements = max_tensor_elements  # --max_request_tensor_elements
        self.tensor_content = tensor_content  # --enable_serialization_as_tensor_content

    def servable_handle(self, model_spec):
        """The version a request's ModelSpec names, held until the handle is closed."""
        return self.server_core.servable_handle(model_spec)

    def predict(self, servable, signature_name, inputs, output_filter=()):
        """RunPredict's checks, then the run: {alias: array} -> {alias: array}."""
        name, signature = signature_def(servable, signature_name, predict_signature_not_found)
        extra = sorted(set(inputs) - set(signature.inputs))
        missing = sorted(set(signature.inputs) - set(inputs))
        if extra or missing:
            if extra and len(extra) == len(inputs):
                raise invalid_argument(
                    f"input tensor alias not found in signature: {extra[0]}. Inputs expected to be in the "
                    f"set {{{','.join(sorted(signature.inputs))}}}.")
            raise invalid_argument(
                f"Request inputs do not match required inputs for model `{servable.name}`. "
                f"Send extra: {{{','.join(extra)}}}. Missing but required: {{{','.join(missing)}}}.")
        for index, key in enumerate(sorted(inputs)):
            expected = tf.dtypes.as_dtype(signature.inputs[key].dtype)
            given = tf.string if inputs[key].dtype.kind in "OSU" else tf.dtypes.as_dtype(inputs[key].dtype)
            if given != expected:
                raise invalid_argument(f"Expects arg[{index}] to be {dtype_name(expected.as_datatype_enum)} but "
                                       f"{dtype_name(given.as_datatype_enum)} is provided")
        for key in output_filter:
            if key not in signature.outputs:
                raise invalid_argument(
                    f"output tensor alias not found in signature: {key} Outputs expected to be in the set "
                    f"{{{','.join(sorted(signature.outputs))}}}.")
        return self.runner.run(servable, name, inputs, output_filter)

    def predict_request(self, request, response):
        """PredictionService.Predict on TF Serving's protos."""
        with self.servable_handle(request.model_spec) as servable:
            return self.predict_request_on(servable, request, response)

    def predict_request_on(self, servable, request, response):
        """A PredictRequest on a version already in hand (warmup runs before the version is available)."""
        inputs = tensors_from_protos(request.inputs, self.max_tensor_elements)
        outputs = self.predict(servable, request.model_spec.signature_name, inputs, tuple(request.output_filter))
        fill_model_spec(response.model_spec, servable, request.model_spec.signature_name)
        for key, value in outputs.items():
            tensor_to_proto(value, response.outputs[key], self.tensor_content)
        return response
