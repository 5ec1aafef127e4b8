"""Deployment plumbing: what notebook 03 exported, TF Serving's config files and writing them.

`models_config` and `monitoring_config` are introduced in notebook 04, which shows them cell for
cell; tests/test_notebook_code.py checks that these copies stay identical to the notebook's cells.
"""

import os
from pathlib import Path

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from model_server.contract import DEFAULT_PROMETHEUS_PATH, MonitoringConfig
from utils.errors import LabError

CONTAINER_MODELS_DIR = "/models"  # where the docker backend and docker-compose.yaml mount the models directory
CONTAINER_CONFIGS_DIR = "/configs"  # ... and the configs directory


def exported_versions(models_dir):
    """{model name: sorted versions} of the SavedModels notebook 03 exported: one model, whose versions
    notebooks 04-07 serve (a LabError when `models_dir` holds models of both catalogs)."""
    models_dir = Path(models_dir)
    found = {}
    for model_dir in sorted(models_dir.iterdir()) if models_dir.is_dir() else []:
        versions = sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit() and (p / "saved_model.pb").exists())
        if versions:
            found[model_dir.name] = versions
    if not found:
        raise LabError(f"No exported models under {models_dir}: {catch_up_hint('03_export_savedmodel')}")
    if len(found) > 1:
        from utils.catalog import CATALOGS  # imports TensorFlow: only for this message

        catalog_of = {model.model_name: catalog for catalog, models in CATALOGS.items() for model in models}
        names = " and ".join(f"{name} (catalog '{catalog_of.get(name, 'unknown')}')" for name in found)
        raise LabError(f"{models_dir} holds {names}, exported in sessions whose catalog differed, and the "
                       f"serving notebooks serve one model: delete the folder of the one you do not want, "
                       f"e.g. `rm -r {models_dir / next(iter(found))}`.")
    return found


def catch_up_hint(notebook):
    """How a learner who skipped `notebook` gets what it makes: run it, or let make run it."""
    return f"run notebook {notebook} first, or `make catch-up UPTO={notebook[:2]}` to run notebooks 01-{notebook[:2]}."


def require_file(path, notebook):
    """`path`, which `notebook` writes; a LabError saying how to make it when it is missing."""
    if not Path(path).exists():
        raise LabError(f"{path} is missing: {catch_up_hint(notebook)}")
    return Path(path)


def models_config(model_name, base_path, versions, labels=None):
    """A ModelServerConfig serving `versions` of one model from `base_path`, with version labels."""
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = model_name
    model.base_path = str(base_path)
    model.model_platform = "tensorflow"
    model.model_version_policy.specific.versions.extend(versions)
    for label, version in (labels or {}).items():
        model.version_labels[label] = version
    return config


def monitoring_config(metrics_path=DEFAULT_PROMETHEUS_PATH):
    """A MonitoringConfig that turns on TF Serving's Prometheus endpoint at `metrics_path`."""
    monitoring = MonitoringConfig()
    monitoring.prometheus_config.enable = True
    monitoring.prometheus_config.path = metrics_path
    return monitoring


def write_config(config, path):
    """Write a config proto in text format (what --model_config_file reads); returns the text.

    The file is written beside its target and renamed into place, so a server polling it never
    reads half a config.
    """
    text = text_format.MessageToString(config)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(text)
    os.replace(staging, path)
    return text
