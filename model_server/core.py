"""The one core behind REST and gRPC: resolve a model spec, run a signature.

Requests and responses are TF Serving's own protos; REST converts JSON to and
from numpy around `run_signature`, gRPC converts TensorProtos, so the two
surfaces resolve models and run signatures in exactly one place.
"""

import time

import numpy as np
import tensorflow as tf
from google.protobuf import any_pb2, text_format
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import get_model_metadata_pb2

from model_server.cli import DEFAULT_MAX_REQUEST_TENSOR_ELEMENTS
from model_server.manager import AVAILABLE, END, LOADING, START, UNLOADING
from model_server.status import ServingError, failed_precondition, invalid_argument, not_found
from model_server.tensors import dtype_name, tensor_to_proto, tensors_from_protos

DEFAULT_SIGNATURE = tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
CLASSIFY_INPUTS, CLASSES, SCORES, REGRESS_OUTPUTS = "inputs", "classes", "scores", "outputs"
STATE_NUMBERS = {START: 10, LOADING: 20, AVAILABLE: 30, UNLOADING: 40, END: 50}


class ServingCore:
    def __init__(self, manager, batcher=None, metrics=None, max_tensor_elements=DEFAULT_MAX_REQUEST_TENSOR_ELEMENTS,
                 tensor_content=False):
        self.manager = manager
        self.batcher = batcher
        self.metrics = metrics
        self.max_tensor_elements = max_tensor_elements  # --max_request_tensor_elements
        self.tensor_content = tensor_content  # --enable_serialization_as_tensor_content

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

    def run_signature(self, servable, signature_name, inputs, output_filter=(), check_dtypes=True, api="Predict"):
        """Check inputs against the signature and run it: {key: array} -> {key: array}.

        Classify and regress pass check_dtypes=False: TF Serving feeds their serialized
        examples by tensor name whatever type the signature declares (classifier.cc, regressor.cc).
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
        for index, key in enumerate(sorted(inputs) if check_dtypes else ()):
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
        inputs = tensors_from_protos(request.inputs, self.max_tensor_elements)
        outputs = self.run_signature(servable, request.model_spec.signature_name, inputs,
                                     tuple(request.output_filter))
        self._fill_spec(response.model_spec, servable, request.model_spec.signature_name)
        for key, value in outputs.items():
            tensor_to_proto(value, response.outputs[key], self.tensor_content)
        return response

    def classify_on(self, servable, request, response):
        name, signature = self._examples_signature(servable, request.model_spec.signature_name)
        self._fill_spec(response.model_spec, servable, request.model_spec.signature_name)
        self._classify(servable, name, signature, request.input, response.result)
        return response

    def regress_on(self, servable, request, response):
        name, signature = self._examples_signature(servable, request.model_spec.signature_name)
        self._fill_spec(response.model_spec, servable, request.model_spec.signature_name)
        self._regress(servable, name, signature, request.input, response.result)
        return response

    def multi_inference_on(self, servable, request, response):
        """Callers check the tasks first (check_multi_inference_tasks)."""
        for task in request.tasks:
            result = response.results.add()
            name = task.model_spec.signature_name or DEFAULT_SIGNATURE
            signature = servable.bundle.signature_defs.get(name)
            if signature is None:
                raise invalid_argument(f"Requested signature not found in model graph: {name}")
            self._fill_spec(result.model_spec, servable, task.model_spec.signature_name)
            if task.method_name == CLASSIFY_METHOD:
                self._classify(servable, name, signature, request.input, result.classification_result, api=None)
            elif task.method_name == REGRESS_METHOD:
                self._regress(servable, name, signature, request.input, result.regression_result, api=None)
            else:
                raise invalid_argument(f"Unsupported signature method_name: {task.method_name}")
        return response

    @staticmethod
    def _examples_signature(servable, signature_name):
        """GetClassificationSignatureDef / GetRegressionSignatureDef: the signature by name."""
        name = signature_name or DEFAULT_SIGNATURE
        signature = servable.bundle.signature_defs.get(name)
        if signature is None:
            raise invalid_argument(f"No signature was found with the name: {name}")
        return name, signature

    # Like TF Serving without --enable_signature_method_name_check (its default), any signature
    # of the right shape serves classify and regress: TF2 SavedModels mark every signature as predict.

    def _run_examples(self, servable, name, input_proto, output_keys, api):
        """PerformOneShotTensorComputation: serialized examples fed to the signature's 'inputs'."""
        examples = serialized_examples(input_proto)
        outputs = self.run_signature(servable, name, {CLASSIFY_INPUTS: examples}, output_keys, check_dtypes=False,
                                     api=api)
        return len(examples), outputs

    def _classify(self, servable, name, signature, input_proto, result, api="Classify"):
        """PreProcessClassification, the run, then PostProcessClassificationResult."""
        if len(signature.inputs) != 1:
            raise invalid_argument("Expected one input Tensor.")
        if len(signature.outputs) not in (1, 2):
            raise invalid_argument(f"Expected one or two output Tensors, found {len(signature.outputs)}")
        if CLASSIFY_INPUTS not in signature.inputs:
            raise invalid_argument(f"No classification inputs found in SignatureDef: {signature_text(signature)}")
        output_keys = tuple(key for key in (CLASSES, SCORES) if key in signature.outputs)
        if not output_keys:
            raise invalid_argument(f'Expected classification signature outputs to contain at least one of "{CLASSES}" '
                                   f'or "{SCORES}". Signature was: {signature_text(signature)}')
        rows, outputs = self._run_examples(servable, name, input_proto, output_keys, api)
        classes, scores = (np.asarray(outputs[key]) if key in outputs else None for key in (CLASSES, SCORES))
        for key, tensor, dtype in (("classes", classes, types_pb2.DT_STRING), ("scores", scores, types_pb2.DT_FLOAT)):
            if tensor is None:
                continue
            if tensor.ndim != 2:
                raise invalid_argument(f"Expected Tensor shape: [batch_size num_classes] but got {shape_text(tensor)}")
            given = tensor_type(tensor)
            if given != dtype:
                raise invalid_argument(f"Expected {key} Tensor of {types_pb2.DataType.Name(dtype)}. "
                                       f"Got: {types_pb2.DataType.Name(given)}")
            if tensor.shape[0] != rows:
                raise invalid_argument(f"Expected {key} output batch size of {rows}. Got: {tensor.shape[0]}")
        if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
            raise invalid_argument(f"Tensors class and score should match in dim_size(1). Got {classes.shape[1]} vs. "
                                   f"{scores.shape[1]}")
        count = (classes if classes is not None else scores).shape[1]
        for i in range(rows):
            classifications = result.classifications.add()
            for j in range(count):
                item = classifications.classes.add()
                if classes is not None:
                    item.label = classes[i, j].decode("utf-8", "replace")
                if scores is not None:
                    item.score = float(scores[i, j])

    def _regress(self, servable, name, signature, input_proto, result, api="Regress"):
        """PreProcessRegression, the run, then PostProcessRegressionResult."""
        if len(signature.inputs) != 1:
            raise invalid_argument("Expected one input Tensor.")
        if len(signature.outputs) != 1:
            raise invalid_argument("Expected one output Tensor.")
        if CLASSIFY_INPUTS not in signature.inputs:
            raise invalid_argument(f"No regression inputs found in SignatureDef: {signature_text(signature)}")
        if REGRESS_OUTPUTS not in signature.outputs:
            raise invalid_argument(f"No regression outputs found in SignatureDef: {signature_text(signature)}")
        rows, outputs = self._run_examples(servable, name, input_proto, (REGRESS_OUTPUTS,), api)
        values = np.asarray(outputs[REGRESS_OUTPUTS])
        if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1)):
            raise invalid_argument(f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got "
                                   f"{shape_text(values)}")
        if values.shape[0] != rows:
            raise invalid_argument(f"Input batch size did not match output batch size: {rows} vs. {values.shape[0]}")
        if tensor_type(values) != types_pb2.DT_FLOAT:
            raise invalid_argument(f"Expected output Tensor of DT_FLOAT.  Got: "
                                   f"{types_pb2.DataType.Name(tensor_type(values))}")
        for value in values.reshape(-1):
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
        # As get_model_status_impl.cc: a version filters, a label does not (every version is listed).
        wanted = spec.version.value if spec.WhichOneof("version_choice") == "version" else None
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


def signature_text(signature):
    """SignatureDef::DebugString."""
    return text_format.MessageToString(signature)


def shape_text(array):
    """TensorShape::DebugString: [2,3]."""
    return "[" + ",".join(str(d) for d in array.shape) + "]"


def tensor_type(array):
    return types_pb2.DT_STRING if array.dtype.kind in "OSU" else tf.dtypes.as_dtype(array.dtype).as_datatype_enum


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
