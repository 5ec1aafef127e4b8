"""What classify, regress and multi-inference share (servables/tensorflow/util.cc): the model spec of
a response, the examples fed to a signature, and how TF Serving prints tensors and signatures."""

import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.framework import types_pb2

from model_server.status import invalid_argument

DEFAULT_SIGNATURE = tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY
EXAMPLES_INPUT = "inputs"  # kClassifyInputs and kRegressInputs


def fill_model_spec(spec, servable, signature_name):
    """MakeModelSpec: the version that answered, and the signature it ran."""
    spec.name = servable.name
    spec.version.value = servable.version
    spec.signature_name = signature_name or DEFAULT_SIGNATURE


def signature_def(servable, signature_name, not_found):
    """(name, SignatureDef) of `signature_name` ('' is serving_default) in the version's bundle.

    `not_found(name)` is the ServingError raised when there is none: each of TF Serving's
    lookups words it its own way.
    """
    name = signature_name or DEFAULT_SIGNATURE
    signature = servable.bundle.signature_defs.get(name)
    if signature is None:
        raise not_found(name)
    return name, signature


def examples_signature_not_found(name):
    """GetClassificationSignatureDef's and GetRegressionSignatureDef's error."""
    return invalid_argument(f"No signature was found with the name: {name}")


def examples_request(run, server_core, runner, request, response):
    """ClassificationService.Classify or RegressionService.Regress (`run`: run_classify or run_regress)
    on the version the request's ModelSpec names."""
    with server_core.servable_handle(request.model_spec) as servable:
        return run_examples_request(run, runner, servable, request, response)


def run_examples_request(run, runner, servable, request, response):
    """A ClassificationRequest or RegressionRequest on a version in hand (warmup runs before the version
    is available): the signature by name, the response's model spec, then `run` (run_classify, run_regress)."""
    name, signature = signature_def(servable, request.model_spec.signature_name, examples_signature_not_found)
    fill_model_spec(response.model_spec, servable, request.model_spec.signature_name)
    run(runner, servable, name, signature, request.input, response.result)
    return response


def serialized_examples(input_proto):
    """InputToSerializedExampleTensor: TF Serving's Input proto -> a 1-D object array of tf.Examples."""
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


def run_on_examples(runner, servable, signature_name, input_proto, output_keys, api):
    """PerformOneShotTensorComputation: (number of examples, {key: array}) with the serialized examples
    fed to the signature's 'inputs', whatever type it declares (classifier.cc, regressor.cc)."""
    examples = serialized_examples(input_proto)
    return len(examples), runner.run(servable, signature_name, {EXAMPLES_INPUT: examples}, output_keys, api)


def signature_text(signature):
    """SignatureDef::DebugString."""
    return text_format.MessageToString(signature)


def tensor_type(array):
    """The DataType enum of a numpy array (strings: DT_STRING)."""
    return types_pb2.DT_STRING if array.dtype.kind in "OSU" else tf.dtypes.as_dtype(array.dtype).as_datatype_enum
