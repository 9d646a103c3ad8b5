#!/usr/bin/env bash
# apt_install.sh WHAT PACKAGE...: installs Debian packages as root, or through sudo, saying what it
# installs (WHAT) and keeping apt's output in a log it shows only when the install fails. The index
# is refreshed only when a first try fails.
set -euo pipefail
what=$1; shift
log=/tmp/kiln-apt-install.log
as_root=()
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "install $what as root: apt-get install $*" >&2; exit 1; }
  as_root=(sudo)
fi
echo "installing $what (log: $log)"
export DEBIAN_FRONTEND=noninteractive
if ! "${as_root[@]}" apt-get install -y --no-install-recommends "$@" > "$log" 2>&1; then
  "${as_root[@]}" apt-get update >> "$log" 2>&1
  "${as_root[@]}" apt-get install -y --no-install-recommends "$@" >> "$log" 2>&1 || { tail -20 "$log"; exit 1; }
fi
