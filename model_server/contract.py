"""What the server and its clients share: the one module of `model_server` that `utils/`, `labtools/`
and the notebooks import (starting the server as a process aside).

TF Serving's own request protos come from `tensorflow_serving.apis` and `tensorflow_serving.config`;
the two config protos that package does not ship are declared in `model_server.protos`.
"""

from pathlib import Path

from model_server.protos import BatchingParameters, MonitoringConfig

__all__ = [
    "BatchingParameters", "MonitoringConfig", "DEFAULT_PROMETHEUS_PATH", "WARMUP_FILE", "MAX_WARMUP_RECORDS",
    "CHANNEL_OPTIONS", "DEFAULT_MAX_GRPC_REQUEST_BYTES", "DEFAULT_MAX_REQUEST_TENSOR_ELEMENTS",
    "DEFAULT_REST_API_MAX_BODY_BYTES", "server_options",
]

# monitoring_config.proto's PrometheusConfig.path when it is empty (prometheus_exporter.cc).
DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"

# saved_model_warmup_util.cc: the file under a version's directory, and how many records it may hold.
WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000

# A client setting: TF Serving lifts gRPC's 4 MB default message size (a batch of 32 float images is
# 19 MB); so do the lab's clients, with these options.
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]

# TF Serving accepts gRPC requests of up to 2 GiB; this server, unless --grpc_channel_arguments sets
# grpc.max_receive_message_length, 64 MiB: one 64 MiB batch of float images already peaks at about
# 2 GB in the lab's model. A request's tensors may claim as many elements as such a message carries
# as float32, so a 50-byte request cannot claim more than a 64 MiB one sends.
DEFAULT_MAX_GRPC_REQUEST_BYTES = 64 << 20
DEFAULT_MAX_REQUEST_TENSOR_ELEMENTS = DEFAULT_MAX_GRPC_REQUEST_BYTES // 4
DEFAULT_REST_API_MAX_BODY_BYTES = 64 << 20


def server_options(channel_arguments=()):
    """The server's gRPC channel arguments: no send limit, requests up to DEFAULT_MAX_GRPC_REQUEST_BYTES,
    each overridden by --grpc_channel_arguments as in TF Serving."""
    options = dict(CHANNEL_OPTIONS)
    options["grpc.max_receive_message_length"] = DEFAULT_MAX_GRPC_REQUEST_BYTES
    options.update(channel_arguments)
    return list(options.items())
