#!/usr/bin/env bash
# Debian's Chromium, which the web workbench's tests drive through Playwright (Playwright's own
# browser download needs a CDN these machines can't reach), and a CJK font so that the Chinese
# pages render (and screenshot) as text.
set -euo pipefail
if command -v chromium >/dev/null && fc-list :lang=zh | grep -q .; then exit 0; fi
"$(dirname "$0")/apt_install.sh" "Debian's chromium and a CJK font" chromium fonts-wqy-microhei
