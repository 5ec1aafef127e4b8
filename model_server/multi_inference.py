"""MultiInference: several classify and regress tasks on one set of examples
(servables/tensorflow/multi_inference.cc, multi_inference_helper.cc)."""

from model_server.classifier import run_classify
from model_server.regressor import run_regress
from model_server.status import invalid_argument
from model_server.util import fill_model_spec, signature_def

CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"


def check_tasks(request):
    """TF Serving's checks on the tasks, made before any model is resolved."""
    if not request.tasks:
        raise invalid_argument("Signature names should be specified for all tasks.")
    if len({task.model_spec.name for task in request.tasks}) != 1:
        raise invalid_argument("Must specify the same model name across all tasks.")
    signatures = [task.model_spec.signature_name for task in request.tasks]
    if len(set(signatures)) != len(signatures):
        raise invalid_argument(f"Duplicate evaluation of signature: {signatures[0]}")


def multi_inference(server_core, runner, request, response):
    """PredictionService.MultiInference on the version the tasks' model spec names."""
    check_tasks(request)
    with server_core.servable_handle(request.tasks[0].model_spec) as servable:
        return multi_inference_on(runner, servable, request, response)


def _signature_not_found(name):
    return invalid_argument(f"Requested signature not found in model graph: {name}")


def multi_inference_on(runner, servable, request, response):
    """The tasks on a version already in hand; callers check them first (`check_tasks`).

    As in TF Serving, MultiInference records no runtime latency.
    """
    for task in request.tasks:
        result = response.results.add()
        name, signature = signature_def(servable, task.model_spec.signature_name, _signature_not_found)
        fill_model_spec(result.model_spec, servable, task.model_spec.signature_name)
        if task.method_name == CLASSIFY_METHOD:
            run_classify(runner, servable, name, signature, request.input, result.classification_result, api=None)
        elif task.method_name == REGRESS_METHOD:
            run_regress(runner, servable, name, signature, request.input, result.regression_result, api=None)
        else:
            raise invalid_argument(f"Unsupported signature method_name: {task.method_name}")
    return response
