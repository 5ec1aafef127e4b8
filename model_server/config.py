"""Model server configuration: TF Serving's ModelServerConfig and version policies."""

import os
from pathlib import Path

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2


class ConfigError(ValueError):
    """A configuration file TF Serving would refuse."""


def parse_model_server_config(text):
    """Parse text-format ModelServerConfig, failing with TF Serving's message."""
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as error:
        raise ConfigError(f"Error parsing text-format tensorflow.serving.ModelServerConfig: {error}") from None
    if config.WhichOneof("config") == "custom_model_config":
        raise ConfigError("ModelServerConfig.custom_model_config is not supported by this server")
    for model in config.model_config_list.config:
        if model.model_platform not in ("", "tensorflow"):
            raise ConfigError(f"Model {model.name}: model_platform {model.model_platform!r} is not supported")
    return config


def read_model_server_config(path):
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ConfigError(f"Could not read model config file {path}: {error.strerror}") from None
    return parse_model_server_config(text)


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
