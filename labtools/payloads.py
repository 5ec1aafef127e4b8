"""`python -m labtools payloads`: write payloads/request-body.json, the original lab's REST request body."""

import argparse
import json

from utils.paths import IMAGES_DIR, PAYLOADS_DIR
from utils.payloads import PREPROCESS_SIGNATURE, b64_body

REQUEST_BODY_PATH = PAYLOADS_DIR / "request-body.json"
REQUEST_BODY_IMAGE = IMAGES_DIR / "chelsea.jpg"


def make_request_body(image_paths, signature_name=PREPROCESS_SIGNATURE):
    """A REST predict body of the images at `image_paths` (see `utils.payloads.b64_body`)."""
    return b64_body([path.read_bytes() for path in image_paths], signature_name)


def main(argv=None):
    argparse.ArgumentParser(prog="python -m labtools payloads", description=__doc__).parse_args(argv)
    PAYLOADS_DIR.mkdir(parents=True, exist_ok=True)
    REQUEST_BODY_PATH.write_text(json.dumps(make_request_body([REQUEST_BODY_IMAGE])) + "\n")
    print(f"wrote {REQUEST_BODY_PATH} from {REQUEST_BODY_IMAGE.name}")
