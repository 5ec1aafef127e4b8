"""tensorflow_model_server's command line (model_servers/main.cc): same flag names, defaults and syntax.

Flags are parsed, and refused, before TensorFlow is imported: this module and `contract` import
neither TensorFlow nor the server.
"""

import argparse
import ctypes
import logging
import os
import sys
from dataclasses import dataclass

from model_server.contract import DEFAULT_MAX_REQUEST_TENSOR_ELEMENTS, DEFAULT_REST_API_MAX_BODY_BYTES

TRUE_WORDS, FALSE_WORDS = ("true", "1", "yes"), ("false", "0", "no")
# server.h: both front ends default to 4 threads per schedulable CPU (port::NumSchedulableCPUs).
SCHEDULABLE_CPUS = len(os.sched_getaffinity(0))
DEFAULT_REST_API_NUM_THREADS = 4 * SCHEDULABLE_CPUS
# Past its threads gRPC answers RESOURCE_EXHAUSTED: 8 threads on 2 CPUs run 7 requests at once, so a
# load of more concurrent clients (notebook 06's batching, make bench) passes a larger value, as it
# must to TF Serving itself.
DEFAULT_GRPC_MAX_THREADS = 4 * SCHEDULABLE_CPUS


@dataclass(frozen=True)
class Flag:
    kind: type
    default: object
    help: str


FLAGS = {
    "port": Flag(int, 8500, "gRPC port"),
    "grpc_socket_path": Flag(str, "", "also serve gRPC on this Unix socket"),
    "grpc_channel_arguments": Flag(str, "", "comma-separated gRPC channel arguments, key=value"),
    "grpc_max_threads": Flag(int, DEFAULT_GRPC_MAX_THREADS,
                             "gRPC threads, one of them polling: a request arriving while all the others run "
                             "is refused RESOURCE_EXHAUSTED (TF Serving's default: 4 x CPUs)"),
    "rest_api_port": Flag(int, 0, "HTTP/REST port; 0 turns REST off"),
    "rest_api_num_threads": Flag(int, DEFAULT_REST_API_NUM_THREADS,
                                 "threads running REST requests; more wait their turn (default 4 x CPUs)"),
    "rest_api_timeout_in_ms": Flag(int, 30000, "REST request timeout"),
    "model_name": Flag(str, "default", "name of the model when --model_base_path is used"),
    "model_base_path": Flag(str, "", "directory of a single model's numbered versions"),
    "model_config_file": Flag(str, "", "text-format ModelServerConfig"),
    "model_config_file_poll_wait_seconds": Flag(int, 0, "re-read --model_config_file this often; 0 = never"),
    "allow_version_labels_for_unavailable_models": Flag(bool, False, "allow new labels on unloaded versions"),
    "file_system_poll_wait_seconds": Flag(int, 1, "look for new versions this often; 0 = only at start"),
    "tensorflow_intra_op_parallelism": Flag(int, 0, "threads per op; 0 = TensorFlow's choice"),
    "tensorflow_inter_op_parallelism": Flag(int, 0, "concurrent ops; 0 = TensorFlow's choice"),
    "monitoring_config_file": Flag(str, "", "text-format MonitoringConfig"),
    "enable_batching": Flag(bool, False, "batch requests to the same signature"),
    "batching_parameters_file": Flag(str, "", "text-format BatchingParameters"),
    "enable_model_warmup": Flag(bool, True, "replay assets.extra/tf_serving_warmup_requests at load"),
    "num_request_iterations_for_warmup": Flag(int, 1, "times each warmup record is replayed"),
    "enable_serialization_as_tensor_content": Flag(bool, False, "Predict outputs in tensor_content, not the typed "
                                                                "fields (float_val, ...)"),
    # Not in TF Serving: this server listens on loopback unless told otherwise.
    "bind_address": Flag(str, "127.0.0.1", "address to listen on (TF Serving's Docker image: 0.0.0.0)"),
    "rest_api_max_body_bytes": Flag(int, DEFAULT_REST_API_MAX_BODY_BYTES, "largest REST request body accepted"),
    # Not in TF Serving: a 50-byte TensorProto may claim a terabyte-sized shape.
    "max_request_tensor_elements": Flag(int, DEFAULT_MAX_REQUEST_TENSOR_ELEMENTS,
                                        "most elements the input tensors of one request may claim in all"),
}
# TF Serving flags this server does not implement: refused, not silently ignored.
UNSUPPORTED_FLAGS = {
    "rest_api_enable_cors_support",
    "enable_per_model_batching_parameters", "num_load_threads", "num_unload_threads", "max_num_load_retries",
    "load_retry_interval_micros", "flush_filesystem_caches", "tensorflow_session_parallelism",
    "tensorflow_session_config_file", "use_alts_credentials", "ssl_config_file", "platform_config_file",
    "per_process_gpu_memory_fraction", "saved_model_tags", "remove_unused_fields_from_bundle_metagraph",
    "prefer_tflite_model", "num_tflite_pools", "num_tflite_interpreters_per_pool",
    "enable_signature_method_name_check", "xla_cpu_compilation_enabled", "enable_profiler",
    "thread_pool_factory_config_file", "mixed_precision", "skip_initialize_tpu",
    "enable_grpc_healthcheck_service", "use_tflite_model", "version",
}


class FlagError(ValueError):
    """A command line TF Serving would refuse, or one using a flag we do not implement."""


def _parse_value(name, flag, text):
    if flag.kind is bool:
        if text is None or text.lower() in TRUE_WORDS:
            return True
        if text.lower() in FALSE_WORDS:
            return False
        raise FlagError(f"Illegal value '{text}' specified for bool flag '{name}'")
    if text is None:
        raise FlagError(f"Missing value for flag '--{name}'")
    if flag.kind is int:
        try:
            return int(text)
        except ValueError:
            raise FlagError(f"Illegal value '{text}' specified for int flag '{name}'") from None
    return text


def parse_flags(argv):
    """`--flag=value` (or `--flag value`; bare or --noflag for booleans) -> Namespace."""
    values = {name: flag.default for name, flag in FLAGS.items()}
    args = list(argv)
    while args:
        arg = args.pop(0)
        if not arg.startswith("-"):
            raise FlagError(f"Unexpected argument '{arg}'")
        name, has_value, text = arg.lstrip("-").partition("=")
        if name in UNSUPPORTED_FLAGS:
            raise FlagError(f"--{name} is a TensorFlow Serving flag this server does not support")
        negated = name.startswith("no") and FLAGS.get(name[2:], Flag(str, "", "")).kind is bool
        if negated:
            name = name[2:]
        if name not in FLAGS:
            raise FlagError(f"Unknown command line flag '{name}'")
        flag = FLAGS[name]
        if negated:
            values[name] = False
            continue
        if not has_value:
            text = None if flag.kind is bool or not args else args.pop(0)
        values[name] = _parse_value(name, flag, text)
    options = argparse.Namespace(**values)
    if options.port == 0 and not options.grpc_socket_path:
        raise FlagError("At least one of server_options.grpc_port or server_options.grpc_socket_path must be set.")
    if not options.model_base_path and not options.model_config_file:
        raise FlagError("Both server_options.model_base_path and server_options.model_config_file are empty!")
    # TF Serving aborts here: grpc++ cannot reserve the thread that polls, nor TensorFlow start a
    # thread pool of no threads (thread::ThreadPool checks num_threads >= 1).
    if options.grpc_max_threads < 1:
        raise FlagError("No thread quota available to even create the minimum required polling threads "
                        f"(i.e 1): --grpc_max_threads={options.grpc_max_threads}")
    if options.rest_api_num_threads < 1:
        raise FlagError(f"--rest_api_num_threads={options.rest_api_num_threads}: the HTTP/REST API needs at least "
                        "1 thread")
    if options.batching_parameters_file and not options.enable_batching:
        raise FlagError("server_options.batching_parameters_file is set without setting "
                        "server_options.enable_batching to true.")
    return options


def usage():
    """The flags, their defaults and what they do."""
    lines = ["usage: python -m model_server [--flag=value ...]", "Flags (as tensorflow_model_server):"]
    lines += [f"  --{name}={flag.default!r}  {flag.help}" for name, flag in FLAGS.items()]
    return "\n".join(lines)


# TF Serving's binary allocates with tcmalloc. Under glibc's malloc every thread that loads or runs a
# version gets an arena of its own, and memory a load takes in one thread and an unload frees from
# another stays in arenas that never shrink: `make soak` grew about 2 MiB per config change. Two
# arenas keep it flat (MALLOC_ARENA_MAX in the environment, when set, is left to decide).
M_ARENA_MAX = -8  # glibc's malloc.h
MALLOC_ARENAS = 2


def limit_malloc_arenas(count=MALLOC_ARENAS):
    """mallopt(M_ARENA_MAX, count) where the C library is glibc; True when it took effect."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # glibc only: musl and macOS have none
    return mallopt is not None and mallopt(M_ARENA_MAX, count) == 1


def main(argv=None):
    """Parse the flags (a refused command line exits 1 with usage), then run the server until stopped."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s.%(msecs)03d %(levelname).1s %(name)s] %(message)s", datefmt="%H:%M:%S")
    try:
        options = parse_flags(sys.argv[1:] if argv is None else argv)
    except FlagError as error:
        print(f"ERROR: {error}\n{usage()}", file=sys.stderr)
        return 1
    limit_malloc_arenas()
    from model_server.server import run  # imports TensorFlow: only once the command line is good
    return run(options)
