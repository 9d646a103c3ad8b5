#!/usr/bin/env bash
# Debian's docker-compose, which `make test-deploy` runs to validate deploy/compose/compose.yaml
# (`docker-compose config` needs no container engine). The other validators, kubectl included,
# are wheels in .venv-deploy (deploy/tools-requirements.txt): Debian has no kubectl package.
# Installed as root, or through sudo.
set -euo pipefail
if command -v docker-compose >/dev/null; then exit 0; fi
as_root=()
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "install Debian's docker-compose package as root: apt-get install docker-compose" >&2; exit 1; }
  as_root=(sudo)
fi
echo "installing Debian's docker-compose (log: /tmp/kiln-deploy-tools-install.log)"
export DEBIAN_FRONTEND=noninteractive
if ! "${as_root[@]}" apt-get install -y --no-install-recommends docker-compose > /tmp/kiln-deploy-tools-install.log 2>&1; then
  "${as_root[@]}" apt-get update >> /tmp/kiln-deploy-tools-install.log 2>&1
  "${as_root[@]}" apt-get install -y --no-install-recommends docker-compose >> /tmp/kiln-deploy-tools-install.log 2>&1 \
    || { tail -20 /tmp/kiln-deploy-tools-install.log; exit 1; }
fi
