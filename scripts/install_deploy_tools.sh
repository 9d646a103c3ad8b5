#!/usr/bin/env bash
# Debian's docker-compose, which `make test-deploy` runs to validate deploy/compose/compose.yaml
# (`docker-compose config` needs no container engine). The other validators, kubectl included,
# are wheels in .venv-deploy (deploy/tools-requirements.txt): Debian has no kubectl package.
set -euo pipefail
if command -v docker-compose >/dev/null; then exit 0; fi
"$(dirname "$0")/apt_install.sh" "Debian's docker-compose" docker-compose
