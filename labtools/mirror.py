"""`python -m labtools mirror --host 0.0.0.0 --port 8765` (`make mirror`): serve this laptop's TF Hub
models to the room, so one download serves every learner.

The mirror is laid out like the bucket the original lab downloads from,
`<mirror>/google/imagenet/resnet_v2_50/classification/5.tar.gz`: learners set
`LAB_TFHUB_MIRROR=http://<this laptop>:<port>` and the `tfhub` catalog tries it first. The tarballs are
made once from the cache (run `make models CATALOG=tfhub` first), then served until Ctrl-C.
"""

import argparse
import functools
import http.server
import tarfile
from pathlib import Path
from urllib.parse import urlsplit

from utils.catalog import CATALOGS, is_prepared, prepare_model
from utils.paths import BUILD_DIR

MIRROR_DIR = BUILD_DIR / "mirror"


def mirror_path(model):
    """The tarball's path inside a mirror: the TF Hub handle's path plus `.tar.gz`."""
    return urlsplit(model.source).path.strip("/") + ".tar.gz"


def build_mirror(mirror_dir=MIRROR_DIR):
    """Write a tarball of every cached tfhub model into `mirror_dir`; returns the paths written."""
    written = []
    for model in CATALOGS["tfhub"]:
        if not is_prepared(model):
            continue
        target = Path(mirror_dir) / mirror_path(model)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = target.with_name(f".{target.name}.tmp")
            with tarfile.open(staging, "w:gz") as tar:  # TF Hub's compressed format: the SavedModel at the root
                saved_model = prepare_model(model)
                for item in sorted(saved_model.iterdir()):
                    tar.add(item, arcname=item.name)
            staging.replace(target)
        written.append(target)
    return written


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - http.server's signature
        """One line per download, not per header."""
        if args and str(args[1]) == "200":
            print(f"{self.client_address[0]} downloaded {self.path}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m labtools mirror", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (0.0.0.0: the whole LAN)")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)
    tarballs = build_mirror()
    if not tarballs:
        parser.exit(1, "error: no TF Hub model is in the cache: run `make models CATALOG=tfhub` first, on a "
                       "network that reaches TF Hub.\n")
    handler = functools.partial(QuietHandler, directory=str(MIRROR_DIR))
    with http.server.ThreadingHTTPServer((args.host, args.port), handler) as server:
        print(f"Serving {len(tarballs)} models at http://{args.host}:{args.port}/; learners set "
              f"LAB_TFHUB_MIRROR=http://<this machine's address>:{args.port}. Ctrl-C stops.", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("Mirror stopped.")
    return 0
