"""`python -m labtools models --catalog auto`: download (tfhub) or convert (offline) both models."""

import argparse

from utils.catalog import CATALOG_CHOICES, catalog_models, prepare_model
from utils.errors import LabError


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m labtools models", description=__doc__)
    parser.add_argument("--catalog", default="auto", choices=CATALOG_CHOICES)
    args = parser.parse_args(argv)
    try:
        for model in catalog_models(args.catalog):
            print(f"{model.title}: {prepare_model(model)}")
    except LabError as error:
        parser.exit(2, f"error: {error}\n")
