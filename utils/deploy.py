"""Deployment plumbing for notebook 04: what notebook 03 exported, and writing a config file."""

from pathlib import Path

from google.protobuf import text_format

from utils.errors import LabError

CONTAINER_MODELS_DIR = "/models"  # where docker-compose.yaml mounts build/models


def exported_versions(models_dir):
    """{model name: sorted versions} of the SavedModels notebook 03 exported."""
    models_dir = Path(models_dir)
    found = {}
    for model_dir in sorted(models_dir.iterdir()) if models_dir.is_dir() else []:
        versions = sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit() and (p / "saved_model.pb").exists())
        if versions:
            found[model_dir.name] = versions
    if not found:
        raise LabError(f"No exported models under {models_dir}: run notebook 03_export_savedmodel first.")
    return found


def write_config(config, path):
    """Write a config proto in text format (what --model_config_file reads); returns the text."""
    text = text_format.MessageToString(config)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)
    return text
