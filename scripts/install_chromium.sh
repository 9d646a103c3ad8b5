#!/usr/bin/env bash
# Debian's Chromium, which the web workbench's tests drive through Playwright (Playwright's own
# browser download needs a CDN these machines can't reach), and a CJK font so that the Chinese
# pages render (and screenshot) as text. Installed as root, or through sudo.
set -euo pipefail
if command -v chromium >/dev/null && fc-list :lang=zh | grep -q .; then exit 0; fi
as_root=()
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "install Debian's chromium package as root: apt-get install chromium" >&2; exit 1; }
  as_root=(sudo)
fi
echo "installing Debian's chromium and a CJK font (log: /tmp/kiln-chromium-install.log)"
export DEBIAN_FRONTEND=noninteractive
if ! "${as_root[@]}" apt-get install -y --no-install-recommends chromium fonts-wqy-microhei > /tmp/kiln-chromium-install.log 2>&1; then
  "${as_root[@]}" apt-get update >> /tmp/kiln-chromium-install.log 2>&1
  "${as_root[@]}" apt-get install -y --no-install-recommends chromium fonts-wqy-microhei >> /tmp/kiln-chromium-install.log 2>&1 \
    || { tail -20 /tmp/kiln-chromium-install.log; exit 1; }
fi
