"""Model server configuration: TF Serving's ModelServerConfig and version policies."""

import logging
import os
from pathlib import Path

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2


log = logging.getLogger("model_server")


class ConfigError(ValueError):
    """A configuration file TF Serving would refuse."""


def read_proto_text_file(path, message_class, description):
    """TF Serving's ParseProtoTextFile: the message in a text-format file, or ConfigError.

    As in TF Serving, protobuf's parser logs "Error parsing text-format <type>: <where>" and
    the error itself says "Invalid protobuf file".
    """
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ConfigError(f"Could not read {description} {path}: {error.strerror}") from None
    try:
        return text_format.Parse(text, message_class())
    except text_format.ParseError as error:
        log.error("Error parsing text-format %s: %s", message_class.DESCRIPTOR.full_name, error)
        raise ConfigError(f"Invalid protobuf file: '{path}'") from None


def read_model_server_config(path):
    """A --model_config_file's ModelServerConfig, with what this server cannot serve refused."""
    config = read_proto_text_file(path, model_server_config_pb2.ModelServerConfig, "model config file")
    if config.WhichOneof("config") == "custom_model_config":
        raise ConfigError("ModelServerConfig.custom_model_config is not supported by this server")
    for model in config.model_config_list.config:
        if model.model_platform not in ("", "tensorflow"):
            raise ConfigError(f"Model {model.name}: model_platform {model.model_platform!r} is not supported")
    return config


def single_model_config(model_name, model_base_path):
    """The config TF Serving builds from --model_name and --model_base_path."""
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = model_name
    model.base_path = model_base_path
    model.model_platform = "tensorflow"
    return config


def available_versions(base_path):
    """{version: path} of the numeric version directories under `base_path`."""
    try:
        entries = list(os.scandir(base_path))
    except OSError:
        return {}
    return {int(e.name): Path(e.path) for e in entries if e.name.isdigit() and e.is_dir()}


def aspired_versions(model_config, on_disk):
    """The versions the model's version policy asks for, among those on disk."""
    policy = model_config.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return set(on_disk)
    if choice == "specific":
        return set(policy.specific.versions) & set(on_disk)
    num_versions = policy.latest.num_versions if choice == "latest" and policy.latest.num_versions else 1
    return set(sorted(on_disk)[-num_versions:])
