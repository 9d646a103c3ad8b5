"""The offline validators of deploy/: the wheels of deploy/tools-requirements.txt in .venv-deploy
(hadolint, kubectl, kubernetes-validate, checkov, envoy, yamllint) and Debian's docker-compose.
`make test-deploy` installs them all first."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DEPLOY_VENV = ROOT / ".venv-deploy"


def tool(name: str) -> str:
    """A validator installed in .venv-deploy."""
    path = DEPLOY_VENV / "bin" / name
    if not path.exists():
        raise RuntimeError(f"{name} is not in {DEPLOY_VENV}: run `make test-deploy`, which installs "
                           "deploy/tools-requirements.txt there")
    return str(path)


def docker_compose() -> str:
    found = shutil.which("docker-compose")
    if found is None:
        raise RuntimeError("docker-compose not found: run scripts/install_deploy_tools.sh (`make test-deploy` does)")
    return found


def run(args: list[str], *, cwd: pathlib.Path = ROOT, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """A validator's run, its output kept for the assertion message. The validators get a home of
    their own and no proxy settings: nothing may reach outside (checkov is also told so)."""
    env = {key: value for key, value in os.environ.items() if not key.lower().endswith("_proxy")}
    env["PATH"] = os.pathsep.join([str(DEPLOY_VENV / "bin"), env.get("PATH", "")])
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def kustomize(path: pathlib.Path) -> str:
    """The manifests `kubectl kustomize` renders from a kustomization directory."""
    done = run([tool("kubectl"), "kustomize", str(path)])
    if done.returncode != 0:
        raise AssertionError(f"kubectl kustomize {path} failed:\n{done.stderr}")
    return done.stdout
