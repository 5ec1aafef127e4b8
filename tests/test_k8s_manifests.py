"""deploy/: the Kustomize base and overlay render, pass Kubernetes' strict schemas and the cross-checks.

Each cross-check is also shown to catch a manifest that breaks it, so none passes by construction.
"""

import copy

import pytest
import yaml

from conftest import PROJECT_ROOT
from utils.appendix import k8s
from utils.errors import LabError

KUSTOMIZATIONS = {"base": k8s.BASE_DIR, "canary": k8s.CANARY_DIR}


@pytest.fixture(scope="module")
def rendered():
    return {name: k8s.render(directory) for name, directory in KUSTOMIZATIONS.items()}


@pytest.fixture(scope="module")
def inference_service():
    return k8s.load(k8s.INFERENCE_SERVICE)


def deployment_of(resources):
    return k8s.one(resources, "Deployment")


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_kustomize_renders_every_resource(rendered, name):
    kinds = sorted(r["kind"] for r in rendered[name])
    assert kinds == ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PersistentVolumeClaim", "Service"]


def test_kustomize_failure_is_one_clear_error(tmp_path):
    with pytest.raises(LabError, match=f"kubectl kustomize {tmp_path} failed: .*kustomization"):
        k8s.render(tmp_path)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_rendered_resources_pass_kubernetes_strict_schemas(rendered, name):
    assert k8s.schema_errors(rendered[name]) == []


def test_strict_schemas_reject_an_unknown_field(rendered):
    broken = copy.deepcopy(rendered["base"])
    deployment_of(broken)["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}  # a typo
    assert k8s.schema_errors(broken) == [
        "Deployment/tfserving: Additional properties are not allowed ('readinessprobe' was unexpected) "
        "(at spec.template.spec.containers.0)"]


def test_strict_schemas_reject_a_wrong_type(rendered):
    broken = copy.deepcopy(rendered["base"])
    deployment_of(broken)["spec"]["replicas"] = "three"
    assert k8s.schema_errors(broken) == [
        "Deployment/tfserving: 'three' is not of type 'integer', 'null' (at spec.replicas)"]


def test_an_unknown_kind_is_reported_not_skipped(inference_service):
    assert k8s.schema_errors(inference_service) == [
        f"InferenceService/efficientnet-lite: no Kubernetes {k8s.KUBERNETES_VERSION} schema for "
        "serving.kserve.io/v1beta1"]


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_models_config_parses_as_model_server_config(rendered, name):
    config = k8s.read_models_config(k8s.one(rendered[name], "ConfigMap"))
    (model,) = config.model_config_list.config
    assert (model.name, list(model.model_version_policy.specific.versions)) == ("efficientnet_lite", [224, 240])


def test_base_labels_stable_old_and_canary_new(rendered):
    (model,) = k8s.read_models_config(k8s.one(rendered["base"], "ConfigMap")).model_config_list.config
    assert dict(model.version_labels) == {"stable": 224, "canary": 240}


def test_canary_overlay_moves_stable_to_the_new_version(rendered):
    (model,) = k8s.read_models_config(k8s.one(rendered["canary"], "ConfigMap")).model_config_list.config
    assert dict(model.version_labels) == {"stable": 240, "canary": 224}


def test_canary_overlay_changes_the_pod_template_so_pods_roll(rendered):
    base, canary = (k8s.PodTemplate(deployment_of(rendered[n])).config_map_name for n in ("base", "canary"))
    assert base.startswith("tfserving-config-") and canary.startswith("tfserving-config-") and base != canary


def test_rolling_update_keeps_every_pod_until_its_successor_is_ready(rendered):
    assert k8s.PodTemplate(deployment_of(rendered["base"])).rolling_update == (1, 0)


def test_image_is_the_release_docker_compose_pins(rendered):
    compose = yaml.safe_load((PROJECT_ROOT / "docker-compose.yaml").read_text())
    (container,) = k8s.containers(deployment_of(rendered["base"]))
    assert container["image"] == compose["services"]["serving"]["image"] == "tensorflow/serving:2.21.0"


def test_pods_run_as_non_root(rendered):
    pod = deployment_of(rendered["base"])["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"] is False


def test_containers_have_requests_and_limits(rendered):
    resources = k8s.containers(deployment_of(rendered["base"]))[0]["resources"]
    assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_manifests_pass_every_cross_check(rendered, name):
    assert k8s.cross_check(rendered[name]) == []


def test_inference_service_passes_every_cross_check(inference_service):
    assert k8s.cross_check(inference_service) == []


# --- each cross-check catches a manifest that breaks it -------------------------------------------

def container_of(resources):
    return k8s.containers(deployment_of(resources))[0]


def relabel_template(resources):
    deployment_of(resources)["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] = "other"


def rename_service_selector(resources):
    k8s.one(resources, "Service")["spec"]["selector"]["app.kubernetes.io/component"] = "nothing"


def misname_probe_port(resources):
    container_of(resources)["readinessProbe"]["httpGet"]["port"] = "rest"


def read_a_missing_key(resources):
    args = container_of(resources)["args"]
    args[args.index("--batching_parameters_file=/etc/tfserving/batching.config")] = (
        "--batching_parameters_file=/etc/tfserving/batch.config")


def probe_an_unknown_label(resources):
    container_of(resources)["readinessProbe"]["httpGet"]["path"] = "/v1/models/efficientnet_lite/labels/prod/metadata"


def probe_the_status_url(resources):
    container_of(resources)["readinessProbe"]["httpGet"]["path"] = "/v1/models/efficientnet_lite"


def target_another_deployment(resources):
    k8s.one(resources, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"] = "tfserving-v2"


def drop_the_unavailable_labels_flag(resources):
    container_of(resources)["args"].remove("--allow_version_labels_for_unavailable_models")


def scrape_an_undeclared_port(resources):
    deployment_of(resources)["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] = "9090"


def set_canary_percent(percent):
    def breaking(resources):
        k8s.one(resources, "InferenceService")["spec"]["predictor"]["canaryTrafficPercent"] = percent
    return breaking


def set_standard_mode(resources):
    k8s.one(resources, "InferenceService")["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = "Standard"


BREAKAGES = {  # cross-check: [(what the breakage is, how it breaks the manifests, words its problem says)]
    k8s.selector_matches_template: [("template relabelled", relabel_template, "does not match the template")],
    k8s.service_selects_pods: [("service selector", rename_service_selector, "selects no pod")],
    k8s.probe_ports_are_declared: [("probe port", misname_probe_port, "'rest' is not one of the declared ports")],
    k8s.config_keys_exist: [("missing key", read_a_missing_key, "has no key 'batch.config'")],
    k8s.probe_names_a_served_label: [("unknown label", probe_an_unknown_label, "label 'prod'"),
                                     ("status URL", probe_the_status_url, "not a label's metadata URL")],
    k8s.hpa_targets_the_deployment: [("HPA target", target_another_deployment, "Deployment/tfserving-v2")],
    k8s.labels_allowed_at_start_up: [("flag dropped", drop_the_unavailable_labels_flag,
                                      "--allow_version_labels_for_unavailable_models")],
    k8s.scrape_annotations_name_the_metrics: [("scrape port", scrape_an_undeclared_port, "port 9090")],
    k8s.canary_percent_in_range: [("above 100", set_canary_percent(120), "120"),
                                  ("negative", set_canary_percent(-5), "-5"),
                                  ("not an integer", set_canary_percent("10%"), "'10%'")],
    k8s.canary_percent_needs_knative: [("Standard mode", set_standard_mode, "silently ignored")],
}
CASES = [(check, *case) for check, cases in BREAKAGES.items() for case in cases]


def test_every_cross_check_has_a_breakage():
    assert set(BREAKAGES) == set(k8s.CROSS_CHECKS)


@pytest.mark.parametrize("check, what, breaking, words", CASES, ids=[f"{c[0].__name__}-{c[1]}" for c in CASES])
def test_each_cross_check_catches_a_manifest_that_breaks_it(rendered, inference_service, check, what, breaking,
                                                             words):
    broken = copy.deepcopy(rendered["base"] + inference_service)
    assert check(broken) == []
    breaking(broken)
    problems = check(broken)
    assert len(problems) == 1 and words in problems[0], problems
