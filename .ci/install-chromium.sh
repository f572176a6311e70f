#!/usr/bin/env bash
# CI: Debian's headless Chromium (and a font) for the viewer's browser test,
# tests/viewer/test_viewer_browser.py, which drives /usr/bin/chromium over the DevTools protocol.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    chromium --version
    exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
chromium --version
