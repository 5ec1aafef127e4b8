"""GetModelMetadata (model_servers/get_model_metadata_impl.cc): a version's SignatureDefs."""

from google.protobuf import any_pb2
from tensorflow_serving.apis import get_model_metadata_pb2

from model_server.status import invalid_argument

SIGNATURE_DEF_FIELD = "signature_def"


def get_model_metadata(server_core, request, response):
    """The `signature_def` metadata (the only field TF Serving serves) of the version requested."""
    if not request.metadata_field:
        raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
    for field in request.metadata_field:
        if field != SIGNATURE_DEF_FIELD:
            raise invalid_argument(f"Metadata field {field} is not supported")
    with server_core.servable_handle(request.model_spec) as servable:
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, value in servable.bundle.signature_defs.items():
            signature_map.signature_def[key].CopyFrom(value)
    packed = any_pb2.Any()
    packed.Pack(signature_map)
    response.metadata[SIGNATURE_DEF_FIELD].CopyFrom(packed)
    return response
