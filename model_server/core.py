"""The one core behind REST and gRPC: resolve a model spec, run a signature.

Requests and responses are TF Serving's own protos; REST converts JSON to and
from numpy around `run_signature`, gRPC converts TensorProtos, so the two
surfaces resolve models and run signatures in exactly one place.
"""

import time

import numpy as np
import tensorflow as tf
from google.protobuf import any_pb2
from tensorflow_serving.apis import get_model_metadata_pb2

from model_server.manager import AVAILABLE, END, LOADING, START, UNLOADING
from model_server.status import ServingError, failed_precondition, invalid_argument, not_found
from model_server.tensors import dtype_name

DEFAULT_SIGNATURE = tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
STATE_NUMBERS = {START: 10, LOADING: 20, AVAILABLE: 30, UNLOADING: 40, END: 50}


class ServingCore:
    def __init__(self, manager, batcher=None, metrics=None):
        self.manager = manager
        self.batcher = batcher
        self.metrics = metrics

    # --- model specs -----------------------------------------------------------

    def acquire(self, model_spec):
        """A handle on the version a ModelSpec names (version, label or latest)."""
        if not model_spec.name:
            raise invalid_argument("ModelSpec has no name specified.")
        choice = model_spec.WhichOneof("version_choice")
        if choice == "version":
            return self.manager.acquire(model_spec.name, version=model_spec.version.value)
        if choice == "version_label":
            return self.manager.acquire(model_spec.name, label=model_spec.version_label)
        return self.manager.acquire(model_spec.name)

    @staticmethod
    def signature(servable, signature_name):
        name = signature_name or DEFAULT_SIGNATURE
        signature = servable.bundle.signature_defs.get(name)
        if signature is None:
            raise failed_precondition(f'Serving signature key "{name}" not found.')
        return name, signature

    # --- running ---------------------------------------------------------------

    def run_signature(self, servable, signature_name, inputs, output_filter=(), api="Predict"):
        """Check inputs against the signature and run it: {key: array} -> {key: array}.

        A successful run records runtime_latency under `api` (None: not recorded, as for MultiInference).
        """
        name, signature = self.signature(servable, signature_name)
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
        started = time.perf_counter()
        try:
            if self.batcher is not None:
                outputs = self.batcher.run(servable, name, inputs, tuple(output_filter))
            else:
                outputs = servable.bundle.run(name, inputs, output_filter)
        except tf.errors.OpError as error:
            raise ServingError.from_tf_error(error) from None
        if self.metrics is not None and api is not None:
            latency_micros = (time.perf_counter() - started) * 1e6
            self.metrics.runtime_latency.labels(servable.name, api, "TF1").observe(latency_micros)
        return outputs

    def predict(self, request, response):
        """PredictionService.Predict on TF Serving's protos."""
        with self.acquire(request.model_spec) as servable:
            return self.predict_on(servable, request, response)

    def classify(self, request, response):
        with self.acquire(request.model_spec) as servable:
            return self.classify_on(servable, request, response)

    def regress(self, request, response):
        with self.acquire(request.model_spec) as servable:
            return self.regress_on(servable, request, response)

    def multi_inference(self, request, response):
        check_multi_inference_tasks(request)
        with self.acquire(request.tasks[0].model_spec) as servable:
            return self.multi_inference_on(servable, request, response)

    # The *_on methods run a request on a version already in hand (requests, and warmup
    # replay, which runs before the version is available to requests).

    def predict_on(self, servable, request, response):
        inputs = {}
        for key, proto in request.inputs.items():
            try:
                inputs[key] = tf.make_ndarray(proto)
            except (TypeError, ValueError):
                raise invalid_argument(f"tensor parsing error: {key}") from None
        outputs = self.run_signature(servable, request.model_spec.signature_name, inputs,
                                     tuple(request.output_filter))
        self._fill_spec(response.model_spec, servable, request.model_spec.signature_name)
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
        return response

    def classify_on(self, servable, request, response):
        self._fill_spec(response.model_spec, servable, request.model_spec.signature_name)
        self._classify(servable, request.model_spec.signature_name, request.input, response.result)
        return response

    def regress_on(self, servable, request, response):
        self._fill_spec(response.model_spec, servable, request.model_spec.signature_name)
        self._regress(servable, request.model_spec.signature_name, request.input, response.result)
        return response

    def multi_inference_on(self, servable, request, response):
        """Callers check the tasks first (check_multi_inference_tasks)."""
        for task in request.tasks:
            result = response.results.add()
            self._fill_spec(result.model_spec, servable, task.model_spec.signature_name)
            if task.method_name == CLASSIFY_METHOD:
                self._classify(servable, task.model_spec.signature_name, request.input, result.classification_result,
                               api=None)
            elif task.method_name == REGRESS_METHOD:
                self._regress(servable, task.model_spec.signature_name, request.input, result.regression_result,
                              api=None)
            else:
                raise invalid_argument(f"Unsupported signature method_name: {task.method_name}")
        return response

    def _examples_input(self, servable, signature_name, input_proto):
        # Like TF Serving without --enable_signature_method_name_check (its default), any
        # signature with one input of serialized tf.Examples serves classify and regress:
        # TF2 SavedModels mark every signature as predict.
        name, signature = self.signature(servable, signature_name)
        if len(signature.inputs) != 1:
            raise invalid_argument("Expected one input Tensor.")
        return name, signature, {next(iter(signature.inputs)): serialized_examples(input_proto)}

    def _classify(self, servable, signature_name, input_proto, result, api="Classify"):
        name, signature, inputs = self._examples_input(servable, signature_name, input_proto)
        if "classes" not in signature.outputs and "scores" not in signature.outputs:
            raise invalid_argument(
                "Expected classification signature outputs to contain at least one of classes or scores.")
        outputs = self.run_signature(servable, name, inputs, api=api)
        rows = len(inputs[next(iter(inputs))])
        classes, scores = (outputs[key].reshape(rows, -1) if key in outputs else None for key in ("classes", "scores"))
        for i in range(rows):
            classifications = result.classifications.add()
            for j in range((classes if classes is not None else scores).shape[1]):
                item = classifications.classes.add()
                if classes is not None:
                    item.label = classes[i, j].decode()
                if scores is not None:
                    item.score = float(scores[i, j])

    def _regress(self, servable, signature_name, input_proto, result, api="Regress"):
        name, signature, inputs = self._examples_input(servable, signature_name, input_proto)
        if len(signature.outputs) != 1 or "outputs" not in signature.outputs:
            raise invalid_argument("Expected one output Tensor.")
        values = self.run_signature(servable, name, inputs, api=api)["outputs"]
        for value in np.asarray(values).reshape(len(inputs[next(iter(inputs))]), -1)[:, 0]:
            result.regressions.add().value = float(value)

    @staticmethod
    def _fill_spec(spec, servable, signature_name):
        spec.name = servable.name
        spec.version.value = servable.version
        spec.signature_name = signature_name or DEFAULT_SIGNATURE

    # --- metadata and status -----------------------------------------------------

    def metadata(self, request, response):
        if not request.metadata_field:
            raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != "signature_def":
                raise invalid_argument(f"Metadata field {field} is not supported")
        with self.acquire(request.model_spec) as servable:
            response.model_spec.name = servable.name
            response.model_spec.version.value = servable.version
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            for key, value in servable.bundle.signature_defs.items():
                signature_map.signature_def[key].CopyFrom(value)
        packed = any_pb2.Any()
        packed.Pack(signature_map)
        response.metadata["signature_def"].CopyFrom(packed)
        return response

    def status(self, request, response):
        spec = request.model_spec
        if not spec.name:
            raise invalid_argument("ModelSpec has no name specified.")
        versions = self.manager.version_states(spec.name)
        choice = spec.WhichOneof("version_choice")
        wanted = None
        if choice == "version_label":
            wanted = self.manager.version_for_label(spec.name, spec.version_label)
        elif choice == "version":
            wanted = spec.version.value
        if wanted is not None:
            versions = {v: s for v, s in versions.items() if v == wanted}
            if not versions:
                raise not_found(f"Could not find version {wanted} of model {spec.name}")
        if not versions:
            raise not_found(f"Could not find any versions of model {spec.name}")
        for version, servable in sorted(versions.items(), reverse=True):
            status = response.model_version_status.add()
            status.version = version
            status.state = STATE_NUMBERS[servable.state]
            status.status.SetInParent()  # TF Serving always reports a status, OK included
            if servable.error is not None:
                status.status.error_code = servable.error.code.value[0]
                status.status.error_message = servable.error.message
        return response


def check_multi_inference_tasks(request):
    """TF Serving's checks on MultiInference tasks, made before any model is resolved."""
    if not request.tasks:
        raise invalid_argument("Signature names should be specified for all tasks.")
    if len({task.model_spec.name for task in request.tasks}) != 1:
        raise invalid_argument("Must specify the same model name across all tasks.")
    signatures = [task.model_spec.signature_name for task in request.tasks]
    if len(set(signatures)) != len(signatures):
        raise invalid_argument(f"Duplicate evaluation of signature: {signatures[0]}")


def serialized_examples(input_proto):
    """TF Serving's Input proto -> a 1-D object array of serialized tf.Examples."""
    kind = input_proto.WhichOneof("kind")
    if kind == "example_list":
        examples = [e.SerializeToString() for e in input_proto.example_list.examples]
    elif kind == "example_list_with_context":
        context = input_proto.example_list_with_context.context.SerializeToString()
        # Concatenated serialisations merge: each example gets the context's features.
        examples = [context + e.SerializeToString() for e in input_proto.example_list_with_context.examples]
    else:
        examples = []
    if not examples:
        raise invalid_argument("Input is empty.")
    return np.array(examples, dtype=object)
