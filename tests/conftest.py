"""Shared fixtures: the project's offline models exported once per test session."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = PROJECT_ROOT.parent / "shared"
REFERENCE_DIR = SHARED_DIR / "reference"
TFSERVING_TESTDATA = SHARED_DIR / "fixtures" / "tfserving-testdata"


@pytest.fixture(scope="session")
def offline_models():
    from utils.catalog import catalog_models

    return catalog_models("offline")


@pytest.fixture(scope="session")
def labels():
    from utils.labels import load_labels

    return load_labels()


@pytest.fixture(scope="session")
def serving_modules(offline_models, labels):
    """{version: ServingModule} for the offline catalog."""
    from utils.catalog import load_model
    from utils.serving import ServingModule

    return {m.version: ServingModule(load_model(m), labels) for m in offline_models}


@pytest.fixture(scope="session")
def exported_models(tmp_path_factory, offline_models, serving_modules):
    """A models directory holding efficientnet_lite/{0,1}, exported like notebook 03."""
    from utils.serving import export_servable

    models_dir = tmp_path_factory.mktemp("models")
    for m in offline_models:
        export_servable(serving_modules[m.version], models_dir, m.model_name, m.version)
    return models_dir
