"""Regress (servables/tensorflow/regressor.cc, regression_service.cc).

Like TF Serving without --enable_signature_method_name_check (its default), any signature of
the right shape serves regress: TF2 SavedModels mark every signature as predict.
"""

import numpy as np
from tensorflow.core.framework import types_pb2

from model_server.status import invalid_argument
from model_server.tensors import shape_text
from model_server.util import EXAMPLES_INPUT, run_on_examples, signature_text, tensor_type

REGRESS_OUTPUTS = "outputs"


def run_regress(runner, servable, name, signature, input_proto, result, api="Regress"):
    """PreProcessRegression, the run, then PostProcessRegressionResult into `result`."""
    if len(signature.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    if len(signature.outputs) != 1:
        raise invalid_argument("Expected one output Tensor.")
    if EXAMPLES_INPUT not in signature.inputs:
        raise invalid_argument(f"No regression inputs found in SignatureDef: {signature_text(signature)}")
    if REGRESS_OUTPUTS not in signature.outputs:
        raise invalid_argument(f"No regression outputs found in SignatureDef: {signature_text(signature)}")
    rows, outputs = run_on_examples(runner, servable, name, input_proto, (REGRESS_OUTPUTS,), api)
    values = np.asarray(outputs[REGRESS_OUTPUTS])
    if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1)):
        raise invalid_argument(f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got "
                               f"{shape_text(values.shape)}")
    if values.shape[0] != rows:
        raise invalid_argument(f"Input batch size did not match output batch size: {rows} vs. {values.shape[0]}")
    if tensor_type(values) != types_pb2.DT_FLOAT:
        raise invalid_argument(f"Expected output Tensor of DT_FLOAT.  Got: "
                               f"{types_pb2.DataType.Name(tensor_type(values))}")
    for value in values.reshape(-1):
        result.regressions.add().value = float(value)
