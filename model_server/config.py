"""Model server configuration: TF Serving's ModelServerConfig and version policies."""

import logging
import os
import re
from pathlib import Path

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from model_server.status import invalid_argument

log = logging.getLogger("model_server")
TENSORFLOW_PLATFORM = "tensorflow"
# TensorFlow's io::ParseURI: a scheme is [a-zA-Z][0-9a-zA-Z.]* followed by "://".
URI_SCHEME = re.compile(r"[a-zA-Z][0-9a-zA-Z.]*://")


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
    return config


def uri_is_relative_path(uri):
    """TF Serving's UriIsRelativePath: neither `scheme://host...` nor an absolute path."""
    return URI_SCHEME.match(uri) is None and not uri.startswith("/")


def validate_model_config_list(config_list):
    """TF Serving's ValidateModelConfigList: unique model names, absolute base paths (or URIs)."""
    names = set()
    for model in config_list.config:
        if model.name in names:
            raise invalid_argument(f"Illegal to list model {model.name} multiple times in config list")
        names.add(model.name)
    for model in config_list.config:
        if uri_is_relative_path(model.base_path):
            raise invalid_argument(f"Expected model {model.name} to have an absolute path or URI; "
                                   f"got base_path()={model.base_path}")


def model_platform(model):
    """TF Serving's GetPlatform: model_platform, or the deprecated model_type's platform."""
    if model.model_type != model_server_config_pb2.MODEL_TYPE_UNSPECIFIED:
        log.warning("Deprecated ModelServerConfig::model_type field used. Prefer "
                    "ModelServerConfig::model_platform.")
        if model.model_platform:
            raise invalid_argument("Illegal setting both ModelServerConfig::model_type (deprecated) and "
                                   f"ModelServerConfig::model_platform, model name is {model.name}")
        if model.model_type != model_server_config_pb2.TENSORFLOW:
            raise invalid_argument(f"ModelServerConfig::model_type choice {model.model_type} not supported.")
        return TENSORFLOW_PLATFORM
    if not model.model_platform:
        raise invalid_argument("Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
                               f"ModelServerConfig::model_platform, model name is {model.name}")
    return model.model_platform


def validate_no_models_change_platforms(old_list, new_list):
    """TF Serving's ValidateNoModelsChangePlatforms: a model keeps its platform across reloads."""
    old_platforms = {model.name: model_platform(model) for model in old_list.config}
    for model in new_list.config:
        if model.name not in old_platforms:
            continue
        platform = model_platform(model)
        if platform != old_platforms[model.name]:
            raise invalid_argument(
                f"Illegal to change a model's platform. For model {model.name} platform was "
                f"{old_platforms[model.name]} and new platform requested is {platform}")


def check_platforms_served(config_list):
    """TF Serving's CreateStoragePathRoutes: every model's platform must be one the server serves."""
    for model in config_list.config:
        platform = model_platform(model)
        if platform != TENSORFLOW_PLATFORM:
            raise invalid_argument(f"Model {model.name} requests unsupported platform {platform}")


def single_model_config(model_name, model_base_path):
    """The config TF Serving builds from --model_name and --model_base_path."""
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = model_name
    model.base_path = model_base_path
    model.model_platform = TENSORFLOW_PLATFORM
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
