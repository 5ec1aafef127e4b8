"""TF Serving's gRPC PredictionService (model_servers/prediction_service_impl.cc): requests as they
come, run by the same Predictor and classify/regress code as REST's."""

from functools import partial

from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, inference_pb2, predict_pb2,
                                     prediction_service_pb2_grpc, regression_pb2)

from model_server.classifier import run_classify
from model_server.get_model_metadata_impl import get_model_metadata
from model_server.grpc_status_util import serve_call
from model_server.multi_inference import multi_inference
from model_server.regressor import run_regress
from model_server.util import examples_request


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict, Classify, Regress, MultiInference and GetModelMetadata; Predict, Classify and Regress
    record request metrics."""

    def __init__(self, predictor, metrics=None):
        self.predictor = predictor
        self.metrics = metrics
        server_core, runner = predictor.server_core, predictor.runner
        self._classify = partial(examples_request, run_classify, server_core, runner)
        self._regress = partial(examples_request, run_regress, server_core, runner)
        self._multi_inference = partial(multi_inference, server_core, runner)
        self._get_model_metadata = partial(get_model_metadata, server_core)

    def Predict(self, request, context):
        return serve_call(self.predictor.predict_request, request, predict_pb2.PredictResponse(), context,
                          self.metrics, "Predict")

    def Classify(self, request, context):
        return serve_call(self._classify, request, classification_pb2.ClassificationResponse(), context,
                          self.metrics, "Classify")

    def Regress(self, request, context):
        return serve_call(self._regress, request, regression_pb2.RegressionResponse(), context, self.metrics,
                          "Regress")

    def MultiInference(self, request, context):
        # TF Serving records no request metrics for MultiInference.
        return serve_call(self._multi_inference, request, inference_pb2.MultiInferenceResponse(), context)

    def GetModelMetadata(self, request, context):
        return serve_call(self._get_model_metadata, request, get_model_metadata_pb2.GetModelMetadataResponse(),
                          context)
