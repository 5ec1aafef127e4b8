"""The two request bodies the lab sends: a gRPC PredictRequest and a REST body of base64 images."""

import base64

import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

PREPROCESS_SIGNATURE = "serving_preprocess"


def predict_request(model_name, signature_name, inputs, version=None, label=None):
    """A PredictRequest for `model_name` with `inputs` ({key: array}) as TensorProtos.

    `version` (a number) or `label` (a name) picks the version; neither means the latest.
    """
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return request


def b64_body(images, signature_name=PREPROCESS_SIGNATURE):
    """A REST predict body of encoded images: {"signature_name": ..., "instances": [{"b64": ...}, ...]}."""
    instances = [{"b64": base64.b64encode(image).decode("ascii")} for image in images]
    return {"signature_name": signature_name, "instances": instances}
