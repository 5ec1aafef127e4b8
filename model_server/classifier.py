"""Classify (servables/tensorflow/classifier.cc, classification_service.cc).

Like TF Serving without --enable_signature_method_name_check (its default), any signature of
the right shape serves classify: TF2 SavedModels mark every signature as predict.
"""

import numpy as np
from tensorflow.core.framework import types_pb2

from model_server.status import invalid_argument
from model_server.tensors import shape_text
from model_server.util import EXAMPLES_INPUT, run_on_examples, signature_text, tensor_type

CLASSES, SCORES = "classes", "scores"


def run_classify(runner, servable, name, signature, input_proto, result, api="Classify"):
    """PreProcessClassification, the run, then PostProcessClassificationResult into `result`."""
    if len(signature.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    if len(signature.outputs) not in (1, 2):
        raise invalid_argument(f"Expected one or two output Tensors, found {len(signature.outputs)}")
    if EXAMPLES_INPUT not in signature.inputs:
        raise invalid_argument(f"No classification inputs found in SignatureDef: {signature_text(signature)}")
    output_keys = tuple(key for key in (CLASSES, SCORES) if key in signature.outputs)
    if not output_keys:
        raise invalid_argument(f'Expected classification signature outputs to contain at least one of "{CLASSES}" '
                               f'or "{SCORES}". Signature was: {signature_text(signature)}')
    rows, outputs = run_on_examples(runner, servable, name, input_proto, output_keys, api)
    classes, scores = (np.asarray(outputs[key]) if key in outputs else None for key in (CLASSES, SCORES))
    for key, tensor, dtype in ((CLASSES, classes, types_pb2.DT_STRING), (SCORES, scores, types_pb2.DT_FLOAT)):
        if tensor is None:
            continue
        if tensor.ndim != 2:
            raise invalid_argument(f"Expected Tensor shape: [batch_size num_classes] but got "
                                   f"{shape_text(tensor.shape)}")
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
