"""`python -m labtools payloads`: write payloads/request-body.json, the original lab's REST request body."""

import argparse
import base64
import json

from utils.paths import IMAGES_DIR, PAYLOADS_DIR

REQUEST_BODY_PATH = PAYLOADS_DIR / "request-body.json"
REQUEST_BODY_IMAGE = IMAGES_DIR / "chelsea.jpg"


def make_request_body(image_paths, signature_name="serving_preprocess"):
    """A REST predict body: {"signature_name": ..., "instances": [{"b64": ...}, ...]}."""
    instances = [{"b64": base64.b64encode(path.read_bytes()).decode("ascii")} for path in image_paths]
    return {"signature_name": signature_name, "instances": instances}


def main(argv=None):
    argparse.ArgumentParser(prog="python -m labtools payloads", description=__doc__).parse_args(argv)
    PAYLOADS_DIR.mkdir(parents=True, exist_ok=True)
    REQUEST_BODY_PATH.write_text(json.dumps(make_request_body([REQUEST_BODY_IMAGE])) + "\n")
    print(f"wrote {REQUEST_BODY_PATH} from {REQUEST_BODY_IMAGE.name}")
