"""GetModelStatus (model_servers/get_model_status_impl.cc): the state of a model's versions."""

from model_server.server_core import AVAILABLE, END, LOADING, START, UNLOADING
from model_server.status import invalid_argument, not_found

# ModelVersionStatus.State's numbers.
STATE_NUMBERS = {START: 10, LOADING: 20, AVAILABLE: 30, UNLOADING: 40, END: 50}


def get_model_status(server_core, request, response):
    """Every version, newest first, or the one version the ModelSpec names (a label names none)."""
    spec = request.model_spec
    if not spec.name:
        raise invalid_argument("ModelSpec has no name specified.")
    versions = server_core.version_states(spec.name)
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
