"""TF Serving's gRPC ModelService (model_servers/model_service_impl.cc): model status and config reload."""

import logging
from functools import partial

from tensorflow_serving.apis import get_model_status_pb2, model_management_pb2, model_service_pb2_grpc

from model_server.get_model_status_impl import get_model_status
from model_server.grpc_status_util import as_serving_error, serve_call
from model_server.status import invalid_argument

log = logging.getLogger("model_server")


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus, and HandleReloadConfigRequest through `reload_config(config)`."""

    def __init__(self, server_core, reload_config):
        self.server_core = server_core
        self.reload_config = reload_config

    def GetModelStatus(self, request, context):
        return serve_call(partial(get_model_status, self.server_core), request,
                          get_model_status_pb2.GetModelStatusResponse(), context)

    def HandleReloadConfigRequest(self, request, context):
        """As TF Serving: a refused config fails the call with its status (and logs it)."""
        try:
            if request.config.WhichOneof("config") != "model_config_list":
                raise invalid_argument("ServerModelConfig type not supported by HandleReloadConfigRequest. "
                                       "Only ModelConfigList is currently supported")
            self.reload_config(request.config)
        except Exception as error:  # noqa: BLE001 - every failure becomes a status, never UNKNOWN
            error = as_serving_error(error, "HandleReloadConfigRequest")
            log.error("ReloadConfig failed: %s", error.message)
            context.abort(error.code, error.message)
        response = model_management_pb2.ReloadConfigResponse()
        response.status.SetInParent()  # TF Serving always sets the status, OK included
        return response
