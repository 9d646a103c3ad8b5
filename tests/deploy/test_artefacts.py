"""The deployment artefacts of deploy/, checked offline: the images' Containerfiles (hadolint,
checkov and what they promise: stages, non-root, read-only root, health checks), the compose file
(`docker-compose config` and its start order and hardening), the Kubernetes manifests (rendered by
`kubectl kustomize`, validated against the API schemas in strict mode, scanned by checkov, and
read for probes, resources, security, addresses and network reachability), the Envoy edge
(`envoy --mode validate`) and every YAML file (yamllint). Every KILN_ variable the artefacts set
must be a setting of the process it is given to, as its pydantic settings class defines them."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from services.common.hosting import LIVENESS
from services.common.internal_client import replicas_target
from services.common.settings import CommonSettings
from services.dataset.settings import DatasetSettings
from services.trainer.service_settings import TrainerServiceSettings
from services.trainer.worker import runner
from tests.deploy.network_policies import Pod, Policies
from tests.deploy.settings_names import env_names, module_of, settings_of
from tests.deploy.tools import DEPLOY, docker_compose, kustomize, run, tool

IMAGES = DEPLOY / "images"
CONTAINERFILES = {"services": IMAGES / "services.Containerfile", "worker": IMAGES / "worker.Containerfile"}
COMPOSE = DEPLOY / "compose" / "compose.yaml"
ENV_EXAMPLE = DEPLOY / "compose" / "kiln.env.example"
KUBERNETES = DEPLOY / "kubernetes"
SECRET_EXAMPLE = KUBERNETES / "secret.example.yaml"
ENVOY = DEPLOY / "envoy" / "envoy.yaml"
MIGRATIONS = {"dataset": ["python", "-m", "services.dataset", "migrate"],
              "trainer": ["python", "-m", "services.trainer", "migrate"],
              "gateway": ["python", "-m", "services.gateway", "migrate"]}
# The services that serve internal calls and so check the internal credential (the gateway and the
# workers only send it).
INTERNAL_SERVERS = {"services.dataset", "services.tagger", "services.trainer"}
ACCEPTED_TOKENS = "KILN_INTERNAL_AUTH__ACCEPTED_TOKENS"
# The services each image runs.
IMAGE_MODULES = {"services": ["services.gateway", "services.dataset", "services.tagger", "services.trainer"],
                 "worker": ["services.trainer.worker"]}


def read_by(command: list[str], variables: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> CommonSettings:
    """The settings the command's process reads from exactly these KILN_ variables."""
    for key in [k for k in os.environ if k.startswith("KILN_")]:
        monkeypatch.delenv(key)
    for key, value in variables.items():
        monkeypatch.setenv(key, value)
    settings = settings_of(command)()
    assert isinstance(settings, CommonSettings)
    return settings


def accepted(settings: CommonSettings) -> list[str]:
    return [token.get_secret_value() for token in settings.internal_auth.accepted_tokens]


def failure(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit {done.returncode}\nstdout:\n{done.stdout[-4000:]}\nstderr:\n{done.stderr[-4000:]}"


# ---- Containerfiles


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str
    arguments: str


def instructions(path: pathlib.Path) -> list[Instruction]:
    """The instructions, continuation lines joined, comments left out."""
    found: list[Instruction] = []
    pending, start = "", 0
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if not pending:
            start = number
        pending += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            keyword, _, arguments = pending.strip().partition(" ")
            found.append(Instruction(start, keyword.upper(), arguments.strip()))
            pending = ""
    return found


def final_stage(path: pathlib.Path) -> list[Instruction]:
    every = instructions(path)
    last_from = max(i for i, instruction in enumerate(every) if instruction.keyword == "FROM")
    return every[last_from:]


def image_env(path: pathlib.Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in final_stage(path):
        if instruction.keyword == "ENV":
            for pair in shlex.split(instruction.arguments):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


@pytest.mark.parametrize("image", sorted(CONTAINERFILES))
def test_hadolint_passes_and_every_ignored_rule_says_why(image: str) -> None:
    path = CONTAINERFILES[image]
    done = run([tool("hadolint"), "--failure-threshold", "info", str(path)])
    assert done.returncode == 0 and not done.stdout.strip(), failure(done)
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore=" in line:
            above = []  # the comment block right above the pragma
            while number - len(above) > 0 and lines[number - len(above) - 1].startswith("#"):
                above.append(lines[number - len(above) - 1])
            for rule in line.split("ignore=")[1].split(","):
                assert any(rule.strip() in comment for comment in above), \
                    f"{path.name}:{number + 1}: ignoring {rule} needs its reason, naming it, in the comment above"


@pytest.mark.parametrize("image", sorted(CONTAINERFILES))
def test_images_are_multi_stage_pinned_non_root_and_read_only_ready(image: str) -> None:
    path = CONTAINERFILES[image]
    every = instructions(path)
    bases = [i.arguments.split()[0] for i in every if i.keyword == "FROM"]
    assert len(bases) >= 2, "a build stage and a runtime stage"
    for base in bases:
        assert re.fullmatch(r"[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}", base), f"{base}: pin the tag and its digest"
    runtime = final_stage(path)
    users = [i.arguments for i in runtime if i.keyword == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[-1]), "the runtime stage runs as a numeric non-root user"
    assert not any(i.keyword in ("ADD",) for i in every)
    # What runs is copied from the build stage, not built where it runs.
    assert not any(i.keyword == "RUN" and "pip install" in i.arguments for i in runtime)
    env = image_env(path)
    volumes = [json.loads(i.arguments) for i in runtime if i.keyword == "VOLUME"]
    writable = [pathlib.PurePosixPath(v) for paths in volumes for v in paths] + [pathlib.PurePosixPath("/tmp")]
    for name in ("HOME", "XDG_CACHE_HOME", "KILN_DATA_DIR", "KILN_MODELS_DIR"):
        assert any(pathlib.PurePosixPath(env[name]).is_relative_to(place) for place in writable), \
            f"{name}={env[name]} is not under a volume or /tmp: the root filesystem is read-only"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    # Every KILN_ variable of the image is a setting of a service the image runs.
    known = set().union(*(env_names(settings_of(["python", "-m", m])) for m in IMAGE_MODULES[image]))
    assert {k for k in env if k.startswith("KILN_")} <= known


def test_services_image_is_cpu_only_with_the_web_app_and_a_grpc_health_check() -> None:
    path = CONTAINERFILES["services"]
    text = path.read_text()
    assert "download.pytorch.org/whl/cpu" in text and "torch==2.13.0+cpu" in text
    assert "nvidia" not in text.lower()
    runtime = final_stage(path)
    assert any(i.keyword == "COPY" and "--from=web" in i.arguments and "web/dist" in i.arguments for i in runtime)
    health = [i.arguments for i in runtime if i.keyword == "HEALTHCHECK"]
    env = image_env(path)
    assert len(health) == 1
    assert f'"services.common.healthcheck", "127.0.0.1:{env["KILN_SERVER__PORT"]}"' in health[0]
    assert env["KILN_WEB_DIR"] == "/opt/kiln/web"


def test_worker_image_is_the_cuda_build_on_nvidias_base() -> None:
    path = CONTAINERFILES["worker"]
    runtime = final_stage(path)
    assert runtime[0].arguments.startswith("nvidia/cuda:13.0"), "torch 2.13.0's PyPI build is for CUDA 13.0"
    assert "whl/cpu" not in path.read_text()
    assert [i.arguments for i in runtime if i.keyword == "CMD"] == ['["python", "-m", "services.trainer.worker"]']


def test_checkov_passes_on_the_containerfiles(tmp_path: pathlib.Path) -> None:
    # checkov finds Dockerfiles by name only (*Dockerfile*): the same files under such names.
    for image, path in CONTAINERFILES.items():
        shutil.copy(path, tmp_path / f"{image}.Dockerfile")
    done = run([tool("checkov"), "--quiet", "--compact", "--skip-download", "--framework", "dockerfile",
                "--output", "json", "-d", str(tmp_path)])
    assert done.returncode == 0, failure(done)
    summary = json.loads(done.stdout)["summary"]
    assert summary["failed"] == 0 and summary["passed"] > 50, summary


# ---- compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    done = run([docker_compose(), "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE), "config"])
    assert done.returncode == 0, failure(done)
    return yaml.safe_load(done.stdout)


def test_compose_needs_every_secret_of_the_env_file(tmp_path: pathlib.Path) -> None:
    lines = ENV_EXAMPLE.read_text().splitlines()
    for secret in ("POSTGRES_PASSWORD", "INTERNAL_TOKEN", "MINIO_ROOT_PASSWORD", "S3_SECRET_KEY"):
        partial = tmp_path / f"without-{secret}.env"
        partial.write_text("\n".join(line for line in lines if not line.startswith(f"{secret}=")) + "\n")
        done = run([docker_compose(), "--env-file", str(partial), "-f", str(COMPOSE), "config"])
        assert done.returncode != 0 and secret in done.stderr, f"compose starts without {secret}: {failure(done)}"


def test_compose_hardens_every_container(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        assert service.get("read_only") is True, name
        assert service.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        user = str(service.get("user", "0"))
        if name == "minio-volume":
            # The one root step: it only hands MinIO's fresh volume to MinIO's user.
            assert user.startswith("0") and service["cap_add"] == ["CHOWN"] and service["command"][0] == "chown"
        else:
            assert not user.startswith("0") and "cap_add" not in service, name
        assert "/tmp" in service.get("tmpfs", ["/tmp"]) or name == "minio-volume", name


def test_compose_starts_in_order_behind_health_and_migrations(compose: dict[str, Any]) -> None:
    services = compose["services"]

    def needs(name: str) -> dict[str, str]:
        return {dep: cond["condition"] for dep, cond in services[name].get("depends_on", {}).items()}

    for service, command in MIGRATIONS.items():
        migration = services[f"migrate-{service}"]
        assert migration["command"] == command
        assert needs(f"migrate-{service}") == {"postgres": "service_healthy"}
        assert needs(service)[f"migrate-{service}"] == "service_completed_successfully"
    assert needs("minio") == {"minio-volume": "service_completed_successfully"}
    assert needs("minio-bucket") == {"minio": "service_healthy"}
    for service in ("tagger", "dataset", "trainer", "worker"):
        reached = set(needs(service))
        while True:  # the bucket comes first, directly or through what the service waits for
            more = reached | {d for r in reached for d in needs(r)}
            if more == reached:
                break
            reached = more
        assert "minio-bucket" in reached, service
    assert needs("gateway")["dataset"] == needs("gateway")["trainer"] == "service_healthy"
    assert needs("worker") == {"trainer": "service_healthy"}
    for name in services:
        for dependency, condition in needs(name).items():
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits on {dependency}'s health check"
            else:
                assert services[dependency]["restart"] == "no", f"{name} waits for {dependency} to end"


def test_compose_health_checks_ask_each_services_grpc_port(compose: dict[str, Any]) -> None:
    port = image_env(CONTAINERFILES["services"])["KILN_SERVER__PORT"]
    for name in ("tagger", "dataset", "trainer", "gateway"):
        test = compose["services"][name]["healthcheck"]["test"]
        assert test == ["CMD", "python", "-m", "services.common.healthcheck", f"127.0.0.1:{port}"], name


def test_compose_worker_gets_a_gpu_and_time_to_hand_its_job_back(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert seconds(worker["stop_grace_period"]) >= handback_seconds()


def test_compose_sets_only_real_settings_and_addresses_real_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    kiln_port = image_env(CONTAINERFILES["services"])["KILN_SERVER__PORT"]
    checked = 0
    for name, service in services.items():
        command = service.get("command")
        if not (isinstance(command, list) and command[:1] == ["python"]):
            continue
        env = service.get("environment", {})
        unknown = {k for k in env if k.startswith("KILN_")} - env_names(settings_of(command))
        assert not unknown, f"{name} is given settings it doesn't have: {unknown}"
        for key, value in env.items():
            if key.endswith("_ADDRESS") and key.startswith("KILN_"):
                host, _, port = value.rpartition(":")
                target = key.removeprefix("KILN_").removesuffix("_ADDRESS").lower()
                assert module_of(services[host]["command"]) == f"services.{target}", f"{name}: {key}={value}"
                assert port == kiln_port
                checked += 1
    assert checked >= 5  # dataset -> tagger, trainer -> dataset, gateway -> both, worker -> trainer


def seconds(duration: str | int | float) -> float:
    if isinstance(duration, int | float):
        return float(duration)
    match = re.fullmatch(r"(\d+)(s|m)", duration)
    assert match, duration
    return int(match[1]) * (60 if match[2] == "m" else 1)


def handback_seconds() -> float:
    """How long a stopped worker may take to hand its job back: its pending reports and then the
    outcome are each retried for up to a lease, each try bounded by the call timeout."""
    lease = TrainerServiceSettings.model_fields["training_lease_seconds"].default
    return 2 * lease + runner.CALL_TIMEOUT


def test_compose_lets_the_workbench_use_the_store_browsers_reach(compose: dict[str, Any]) -> None:
    services = compose["services"]
    public_store = services["dataset"]["environment"]["KILN_S3__PUBLIC_ENDPOINT"]
    assert services["trainer"]["environment"]["KILN_S3__PUBLIC_ENDPOINT"] == public_store
    assert json.loads(services["gateway"]["environment"]["KILN_WEB_STORE_ORIGINS"]) == [public_store]


def test_compose_services_leave_migrating_to_the_steps(compose: dict[str, Any],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Every service with a database is told not to migrate it: its migrate-* step, which it waits
    for, does."""
    migrating: dict[str, bool] = {}
    for name, service in compose["services"].items():
        command = service.get("command")
        env = service.get("environment", {})
        if (isinstance(command, list) and command[:1] == ["python"] and command[-1] != "migrate"
                and any(key.endswith("_DATABASE_URL") for key in env)):
            migrating[name] = read_by(command, {k: v for k, v in env.items() if k == "KILN_MIGRATE_ON_START"},
                                      monkeypatch).migrate_on_start
    assert migrating == {service: False for service in MIGRATIONS}


def test_compose_servers_accept_the_tokens_of_a_rotation(compose: dict[str, Any], tmp_path: pathlib.Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """INTERNAL_ACCEPTED_TOKENS of the env file reaches every server of internal calls, as the JSON
    list the setting parses; as the example has it, or left out, they accept no further token."""
    example = ENV_EXAMPLE.read_text()
    assert "\nINTERNAL_ACCEPTED_TOKENS=[]\n" in example
    rotating = tmp_path / "rotating.env"
    rotating.write_text(example.replace("\nINTERNAL_ACCEPTED_TOKENS=[]\n",
                                        '\nINTERNAL_ACCEPTED_TOKENS=["old-token","another"]\n'))
    left_out = tmp_path / "left-out.env"
    left_out.write_text(example.replace("\nINTERNAL_ACCEPTED_TOKENS=[]\n", "\n"))
    configs = {"example": (compose, [])}
    for env_file, wanted in ((rotating, ["old-token", "another"]), (left_out, [])):
        done = run([docker_compose(), "--env-file", str(env_file), "-f", str(COMPOSE), "config"])
        assert done.returncode == 0, failure(done)
        configs[env_file.stem] = (yaml.safe_load(done.stdout), wanted)
    for case, (config, wanted) in configs.items():
        accepting = {}
        for service in config["services"].values():
            env = service.get("environment", {})
            if ACCEPTED_TOKENS in env:
                accepting[module_of(service["command"])] = accepted(
                    read_by(service["command"], {ACCEPTED_TOKENS: env[ACCEPTED_TOKENS]}, monkeypatch))
        assert accepting == {module: wanted for module in INTERNAL_SERVERS}, case


# ---- Kubernetes


@dataclass(frozen=True)
class Rendered:
    name: str
    text: str
    objects: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def named(self, kind: str, name: str) -> dict[str, Any]:
        (found,) = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        return found

    def workloads(self) -> list[dict[str, Any]]:
        return self.of_kind("Deployment") + self.of_kind("Job")


@pytest.fixture(scope="module")
def renders() -> dict[str, Rendered]:
    found = {}
    for name, path in (("base", KUBERNETES / "base"), ("production", KUBERNETES / "overlays" / "production")):
        text = kustomize(path)
        found[name] = Rendered(name, text, [o for o in yaml.safe_load_all(text) if o])
    return found


@pytest.fixture(scope="module", params=["base", "production"])
def rendered(request: pytest.FixtureRequest, renders: dict[str, Rendered]) -> Rendered:
    return renders[request.param]


@pytest.fixture(scope="module")
def production(renders: dict[str, Rendered]) -> Rendered:
    return renders["production"]


def pod_specs(rendered: Rendered) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for workload in rendered.workloads():
        yield workload, workload["spec"]["template"]["spec"]


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def env_of(rendered: Rendered, container: dict[str, Any]) -> dict[str, str]:
    """The container's environment: its ConfigMaps' keys and its own entries (secrets as <secret>)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(rendered.named("ConfigMap", source["configMapRef"]["name"])["data"])
    for entry in container.get("env", []):
        env[entry["name"]] = entry.get("value", "<secret>")
    return env


def test_kubectl_kustomize_renders_namespaced_objects(rendered: Rendered) -> None:
    kinds = {o["kind"] for o in rendered.objects}
    assert {"Namespace", "ConfigMap", "Deployment", "Service", "Job", "PodDisruptionBudget", "NetworkPolicy",
            "PersistentVolumeClaim", "Ingress"} <= kinds
    assert not rendered.of_kind("Secret"), "the Secret is the operator's (secret.example.yaml shows it)"
    for item in rendered.objects:
        if item["kind"] != "Namespace":
            assert item["metadata"]["namespace"] == "kiln", item["metadata"]["name"]


def test_every_object_validates_against_the_kubernetes_schemas_strictly(
        renders: dict[str, Rendered], tmp_path: pathlib.Path) -> None:
    files = []
    for name, render in renders.items():
        files.append(tmp_path / f"{name}.yaml")
        files[-1].write_text(render.text)
    done = run([tool("kubernetes-validate"), "--strict", "--quiet", *map(str, files), str(SECRET_EXAMPLE)])
    assert done.returncode == 0 and "ERROR" not in done.stdout + done.stderr, failure(done)
    # Strict means strict: a field the schema doesn't have is refused.
    deployment = next(o for o in renders["base"].objects if o["kind"] == "Deployment")
    wrong = json.loads(json.dumps(deployment))
    wrong["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpcPort"] = 50051
    (tmp_path / "wrong.yaml").write_text(yaml.safe_dump(wrong))
    refused = run([tool("kubernetes-validate"), "--strict", "--quiet", str(tmp_path / "wrong.yaml")])
    assert refused.returncode != 0 and "grpcPort" in refused.stdout + refused.stderr, failure(refused)


def test_checkov_passes_on_the_rendered_manifests(renders: dict[str, Rendered], tmp_path: pathlib.Path) -> None:
    for name, render in renders.items():
        (tmp_path / f"{name}.yaml").write_text(render.text)
    done = run([tool("checkov"), "--quiet", "--compact", "--skip-download", "--framework", "kubernetes",
                "--output", "json", "-d", str(tmp_path)])
    assert done.returncode == 0, failure(done)
    summary = json.loads(done.stdout)["summary"]
    assert summary["failed"] == 0 and summary["passed"] > 500, summary
    # Every check skipped says why.
    for workload in renders["base"].workloads():
        for key, skip in workload["metadata"].get("annotations", {}).items():
            if key.startswith("checkov.io/skip"):
                check, _, reason = skip.partition("=")
                assert re.fullmatch(r"CKV2?_K8S_\d+", check) and len(reason) > 20, skip


def test_checkov_finds_no_secret_in_deploy() -> None:
    """Its secrets scan reads the YAML files (compose, manifests, the Secret example, Envoy)."""
    done = run([tool("checkov"), "--quiet", "--compact", "--skip-download", "--framework", "secrets",
                "--output", "json", "-d", str(DEPLOY)])
    assert done.returncode == 0, failure(done)
    summary = json.loads(done.stdout)["summary"]
    assert summary["failed"] == 0 and summary["resource_count"] >= 1, summary


def assert_hardened_and_sized(workload: dict[str, Any]) -> None:
    name = workload["metadata"]["name"]
    spec = workload["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is False, name
    pod_security = spec["securityContext"]
    assert pod_security["runAsNonRoot"] is True and pod_security["runAsUser"] > 10000, name
    assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}, name
    for container in containers(spec):
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True, name
        assert security["allowPrivilegeEscalation"] is False, name
        assert security["capabilities"] == {"drop": ["ALL"]}, name
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), f"{name} {kind}"
        mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
        assert "/tmp" in mounts, f"{name}: a writable /tmp under a read-only root"
        assert re.fullmatch(r"[\w./-]+:[\w.-]+", container["image"]) and not container["image"].endswith(
            ":latest"), container["image"]


def test_every_workload_is_hardened_and_sized(rendered: Rendered) -> None:
    for workload in rendered.workloads():
        assert_hardened_and_sized(workload)


def test_the_one_off_jobs_validate_and_are_hardened(tmp_path: pathlib.Path) -> None:
    """deploy/kubernetes/jobs/: examples an operator applies by hand (a base-model import), outside
    the kustomization, held to the same checks as the rest."""
    files = sorted((KUBERNETES / "jobs").glob("*.yaml"))
    assert files
    done = run([tool("kubernetes-validate"), "--strict", "--quiet", *map(str, files)])
    assert done.returncode == 0 and "ERROR" not in done.stdout + done.stderr, failure(done)
    checked = run([tool("checkov"), "--quiet", "--compact", "--skip-download", "--framework", "kubernetes",
                   "--output", "json", "-d", str(KUBERNETES / "jobs")])
    assert checked.returncode == 0, failure(checked)
    summary = json.loads(checked.stdout)["summary"]
    assert summary["failed"] == 0 and summary["passed"] > 20, summary
    for path in files:
        objects = list(yaml.safe_load_all(path.read_text()))
        assert all(o["metadata"]["namespace"] == "kiln" for o in objects), path
        jobs = [o for o in objects if o["kind"] == "Job"]
        assert len(jobs) == 1, path
        assert_hardened_and_sized(jobs[0])
        # Its pod is fenced off by a policy of its own (it needs no traffic at all).
        labels = jobs[0]["spec"]["template"]["metadata"]["labels"]
        fences = [o for o in objects if o["kind"] == "NetworkPolicy"
                  and o["spec"]["podSelector"]["matchLabels"].items() <= labels.items()]
        assert fences and all(not f["spec"].get("ingress") and not f["spec"].get("egress") for f in fences), path


def test_every_serving_deployment_has_grpc_probes_on_its_server_port(rendered: Rendered) -> None:
    server_port = int(rendered.named("ConfigMap", "kiln-common")["data"]["KILN_SERVER__PORT"])
    for deployment, spec in pod_specs(rendered):
        if deployment["kind"] != "Deployment":
            continue
        (container,) = spec["containers"]
        if module_of(container["command"]) == "services.trainer.worker":
            assert "ports" not in container and "readinessProbe" not in container
            continue
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["grpc"] == server_port == int(env_of(rendered, container)["KILN_SERVER__PORT"])
        assert container["readinessProbe"]["grpc"] == {"port": server_port}
        assert container["livenessProbe"]["grpc"] == {"port": server_port, "service": LIVENESS}
        assert container["startupProbe"]["grpc"]["port"] == server_port
        env = env_of(rendered, container)
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert int(annotations["prometheus.io/port"]) == ports["metrics"] == int(env["KILN_METRICS__PORT"])
        assert env["KILN_METRICS__HOST"] == env["KILN_SERVER__HOST"] == "0.0.0.0"
        if module_of(container["command"]) == "services.gateway":
            assert ports["http"] == int(env["KILN_HTTP__PORT"])


def test_the_worker_requests_one_gpu_and_time_to_hand_its_job_back(rendered: Rendered) -> None:
    worker = rendered.named("Deployment", "kiln-worker")
    spec = worker["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["terminationGracePeriodSeconds"] >= handback_seconds()
    assert container["image"].split(":")[0].endswith("/worker")


def test_every_container_gets_only_settings_it_has(rendered: Rendered) -> None:
    for _, spec in pod_specs(rendered):
        for container in containers(spec):
            known = env_names(settings_of(container["command"]))
            unknown = {k for k in env_of(rendered, container) if k.startswith("KILN_")} - known
            assert not unknown, f"{container['command']} is given settings it doesn't have: {unknown}"


def test_the_migration_job_runs_each_services_migration_before_nothing_else(rendered: Rendered) -> None:
    job = rendered.named("Job", "kiln-migrate")
    commands = [c["command"] for c in containers(job["spec"]["template"]["spec"])]
    assert commands == list(MIGRATIONS.values())


def test_deployments_with_a_database_leave_migrating_to_the_job(rendered: Rendered,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    migrating: dict[str, bool] = {}
    for workload, spec in pod_specs(rendered):
        if workload["kind"] != "Deployment":
            continue
        for container in containers(spec):
            env = env_of(rendered, container)
            if any(key.endswith("_DATABASE_URL") for key in env):
                migrating[module_of(container["command"])] = read_by(
                    container["command"], {k: v for k, v in env.items() if k == "KILN_MIGRATE_ON_START"},
                    monkeypatch).migrate_on_start
    assert migrating == {f"services.{service}": False for service in MIGRATIONS}


def test_internal_servers_read_accepted_tokens_from_an_optional_secret_key(rendered: Rendered,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Every server of internal calls takes KILN_INTERNAL_AUTH__ACCEPTED_TOKENS from the Secret's
    internal-accepted-tokens key, which may be missing (no further token); the example's value is
    the JSON list the setting parses, empty."""
    secret = yaml.safe_load(SECRET_EXAMPLE.read_text())
    accepting = {}
    for _, spec in pod_specs(rendered):
        for container in containers(spec):
            for entry in container.get("env", []):
                if entry["name"] == ACCEPTED_TOKENS:
                    accepting[module_of(container["command"])] = entry["valueFrom"]["secretKeyRef"]
    reference = {"name": secret["metadata"]["name"], "key": "internal-accepted-tokens", "optional": True}
    assert accepting == {module: reference for module in INTERNAL_SERVERS}
    for module in INTERNAL_SERVERS:
        example = secret["stringData"]["internal-accepted-tokens"]
        assert accepted(read_by(["python", "-m", module], {ACCEPTED_TOKENS: example}, monkeypatch)) == []


def test_every_secret_key_a_pod_reads_is_in_the_example_secret(rendered: Rendered) -> None:
    secret = yaml.safe_load(SECRET_EXAMPLE.read_text())
    references = [entry["valueFrom"]["secretKeyRef"] for _, spec in pod_specs(rendered)
                  for container in containers(spec) for entry in container.get("env", [])
                  if "secretKeyRef" in entry.get("valueFrom", {})]
    assert len(references) > 10
    for reference in references:
        assert reference["name"] == secret["metadata"]["name"], reference
        assert reference["key"] in secret["stringData"], f"{reference['key']} is missing from {SECRET_EXAMPLE.name}"


def test_addresses_name_the_services_that_run_there(rendered: Rendered) -> None:
    """Each KILN_<SERVICE>_ADDRESS is dns:///<Service>.<namespace>.svc.cluster.local:<port> of a
    Service whose pods run that service on that port; a Service of several replicas is headless, so
    the name resolves to every replica and the client spreads its calls over them."""
    checked = 0
    for _, spec in pod_specs(rendered):
        for container in containers(spec):
            for key, value in env_of(rendered, container).items():
                if not (key.startswith("KILN_") and key.endswith("_ADDRESS")):
                    continue
                assert replicas_target(value) == value
                match = re.fullmatch(r"dns:///([\w-]+)\.([\w-]+)\.svc\.cluster\.local:(\d+)", value)
                assert match, f"{key}={value}"
                service = rendered.named("Service", match[1])
                assert service["metadata"]["namespace"] == match[2]
                (port,) = [p for p in service["spec"]["ports"] if p["port"] == int(match[3])]
                targets = [d for d in rendered.of_kind("Deployment")
                           if d["spec"]["template"]["metadata"]["labels"].items()
                           >= service["spec"]["selector"].items()]
                assert len(targets) == 1, f"{match[1]} selects {len(targets)} deployments"
                (target,) = targets[0]["spec"]["template"]["spec"]["containers"]
                wanted = key.removeprefix("KILN_").removesuffix("_ADDRESS").lower()
                assert module_of(target["command"]) == f"services.{wanted}", f"{key}={value}"
                named_ports = {p["name"]: p["containerPort"] for p in target["ports"]}
                assert named_ports[port["targetPort"]] == int(env_of(rendered, target)["KILN_SERVER__PORT"])
                if targets[0]["spec"]["replicas"] > 1:
                    assert service["spec"].get("clusterIP") == "None", f"{match[1]} has replicas: make it headless"
                checked += 1
    assert checked >= 5


def test_the_workbench_may_use_the_store_and_origin_browsers_reach(rendered: Rendered) -> None:
    gateway = rendered.named("Deployment", "kiln-gateway")["spec"]["template"]["spec"]["containers"][0]
    env = env_of(rendered, gateway)
    public_store = rendered.named("ConfigMap", "kiln-store")["data"]["KILN_S3__PUBLIC_ENDPOINT"]
    assert json.loads(env["KILN_WEB_STORE_ORIGINS"]) == [public_store]
    hosts = {rule["host"] for ingress in rendered.of_kind("Ingress") for rule in ingress["spec"]["rules"]
             if rule["http"]["paths"][0]["backend"]["service"]["port"]["name"] == "http"}
    assert json.loads(env["KILN_CORS_ALLOWED_ORIGINS"]) == [f"https://{host}" for host in sorted(hosts)]


def test_every_deployment_has_a_disruption_budget(rendered: Rendered) -> None:
    budgets = rendered.of_kind("PodDisruptionBudget")
    for deployment in rendered.of_kind("Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert any(labels.items() >= b["spec"]["selector"]["matchLabels"].items() for b in budgets), \
            deployment["metadata"]["name"]


def test_production_runs_replicas_of_the_released_images(production: Rendered) -> None:
    replicas = {d["metadata"]["name"]: d["spec"]["replicas"] for d in production.of_kind("Deployment")}
    assert replicas["kiln-dataset"] == 2 and replicas["kiln-trainer"] == 2 and replicas["kiln-gateway"] >= 2
    images = {c["image"] for _, spec in pod_specs(production) for c in containers(spec)}
    assert all(re.fullmatch(r".+:\d+\.\d+\.\d+", image) for image in images), images


# ---- network policies

OUTSIDE = {
    "ingress-controller": Pod("ingress-controller", "ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"},
                              {"kubernetes.io/metadata.name": "ingress-nginx"}),
    "prometheus": Pod("prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"},
                      {"kubernetes.io/metadata.name": "monitoring"}),
    "elsewhere": Pod("elsewhere", "default", {"app.kubernetes.io/name": "kiln-gateway"},
                     {"kubernetes.io/metadata.name": "default"}),
}


@pytest.fixture(scope="module")
def cluster(production: Rendered) -> tuple[Policies, dict[str, Pod]]:
    namespace = production.of_kind("Namespace")[0]
    # The API server labels every namespace with its name.
    namespace_labels = {**namespace["metadata"].get("labels", {}),
                        "kubernetes.io/metadata.name": namespace["metadata"]["name"]}
    pods = dict(OUTSIDE)
    for workload, spec in pod_specs(production):
        name = workload["metadata"]["name"].removeprefix("kiln-")
        ports = {p["name"]: p["containerPort"] for c in spec["containers"] for p in c.get("ports", [])}
        pods[name] = Pod(name, workload["metadata"]["namespace"], workload["spec"]["template"]["metadata"]["labels"],
                         namespace_labels, ports)
    # A pod someone starts in the namespace by hand (a debug shell): Kiln's pods don't answer it.
    pods["stranger"] = Pod("stranger", "kiln", {"run": "debug"}, namespace_labels)
    return Policies(production.of_kind("NetworkPolicy")), pods


def reachers(cluster: tuple[Policies, dict[str, Pod]], target: str, port: int) -> set[str]:
    policies, pods = cluster
    return {name for name, pod in pods.items() if name != target and policies.can_connect(pod, pods[target], port)}


def test_only_the_gateway_reaches_the_internal_services(cluster: tuple[Policies, dict[str, Pod]]) -> None:
    assert reachers(cluster, "dataset", 50051) == {"gateway", "trainer"}
    assert reachers(cluster, "trainer", 50051) == {"gateway", "worker"}
    assert reachers(cluster, "tagger", 50051) == {"dataset"}
    # From outside the namespace only the ingress controller, and only to the gateway's two ports.
    assert reachers(cluster, "gateway", 50051) == reachers(cluster, "gateway", 8080) == {"ingress-controller"}
    assert reachers(cluster, "gateway", 9000) == set()
    for quiet in ("worker", "migrate"):
        assert all(reachers(cluster, quiet, port) == set() for port in (50051, 8080, 9100))


def test_prometheus_alone_scrapes_the_metrics_ports(cluster: tuple[Policies, dict[str, Pod]]) -> None:
    for service in ("gateway", "dataset", "tagger", "trainer"):
        assert reachers(cluster, service, 9100) == {"prometheus"}


def test_every_pod_resolves_names_and_reaches_only_its_dependencies(cluster: tuple[Policies, dict[str, Pod]]) -> None:
    policies, pods = cluster
    dns = Pod("dns", "kube-system", {"k8s-app": "kube-dns"}, {"kubernetes.io/metadata.name": "kube-system"})
    kiln = ("gateway", "dataset", "tagger", "trainer", "worker", "migrate")
    for name in kiln:
        assert policies.can_connect(pods[name], dns, 53, "UDP"), name
    database = Pod("postgres", "databases", {"app": "postgres"}, {"kubernetes.io/metadata.name": "databases"})
    store = Pod("minio", "minio", {"app": "minio"}, {"kubernetes.io/metadata.name": "minio"})
    assert {n for n in kiln if policies.can_connect(pods[n], database, 5432)} == {"gateway", "dataset", "trainer",
                                                                                    "migrate"}
    assert {n for n in kiln if policies.can_connect(pods[n], store, 9000)} == {"dataset", "tagger", "trainer",
                                                                                "worker"}
    # A pod no policy names: nothing reaches it, it reaches nothing but DNS.
    assert all(reachers(cluster, "stranger", port) == set() for port in (22, 8080, 50051))
    assert not any(policies.can_connect(pods["stranger"], target, port) for target in (database, store, pods["dataset"])
                   for port in (5432, 9000, 50051))
    assert policies.can_connect(pods["stranger"], dns, 53, "UDP")


# ---- Envoy, YAML


def test_envoy_validates_the_edge(tmp_path: pathlib.Path) -> None:
    """With a certificate where the mounted Secret would put it (a throwaway self-signed one)."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=kiln.example.com", "-keyout", str(tmp_path / "tls.key"), "-out", str(tmp_path / "tls.crt")],
                   check=True, capture_output=True, timeout=60)
    text = ENVOY.read_text()
    assert text.count("/etc/envoy/tls/") == 2
    config = tmp_path / "envoy.yaml"
    config.write_text(text.replace("/etc/envoy/tls/", f"{tmp_path}/"))
    done = run([tool("envoy"), "--mode", "validate", "-c", str(config)])
    assert done.returncode == 0 and "OK" in done.stdout + done.stderr, failure(done)
    # The gRPC port over HTTP/2, the HTTP port for Connect and the web app, both the gateway's.
    clusters = {c["name"]: c for c in yaml.safe_load(text)["static_resources"]["clusters"]}
    server_port = int(image_env(CONTAINERFILES["services"])["KILN_SERVER__PORT"])

    def address_of(name: str) -> tuple[str, int]:
        endpoint = clusters[name]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        socket = endpoint["address"]["socket_address"]
        return socket["address"], int(socket["port_value"])

    compose_services = yaml.safe_load(COMPOSE.read_text())["services"]
    gateway = compose_services[address_of("gateway_grpc")[0]]
    assert module_of(gateway["command"]) == "services.gateway"
    assert address_of("gateway_grpc")[1] == server_port
    assert "http2_protocol_options" in json.dumps(clusters["gateway_grpc"])
    assert address_of("gateway_http") == (address_of("gateway_grpc")[0], int(gateway["environment"]["KILN_HTTP__PORT"]))


def test_envoy_refuses_a_broken_edge(tmp_path: pathlib.Path) -> None:
    """The validation is real: a route to a cluster that doesn't exist is refused."""
    config = tmp_path / "envoy.yaml"
    config.write_text(ENVOY.read_text().replace("cluster: gateway_http", "cluster: no_such_cluster"))
    done = run([tool("envoy"), "--mode", "validate", "-c", str(config)])
    assert done.returncode != 0


def test_yamllint_passes_on_every_yaml_file() -> None:
    files = [str(p) for p in DEPLOY.rglob("*.yaml")]
    assert len(files) >= 10
    done = run([tool("yamllint"), "--strict", "-c", str(DEPLOY / "yamllint.yaml"), *files])
    assert done.returncode == 0, failure(done)


def test_settings_names_come_from_the_settings_classes() -> None:
    """The names the checks above compare with are the services' own, nested ones included."""
    names = env_names(DatasetSettings)
    assert {"KILN_S3__ENDPOINT", "KILN_INTERNAL_AUTH__TOKEN", "KILN_DATASET_DATABASE_URL",
            "KILN_SERVER__TLS__CERT_FILE"} <= names
    assert "KILN_TRAINER_DATABASE_URL" not in names and "KILN_S3__NO_SUCH" not in names
