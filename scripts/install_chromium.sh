#!/usr/bin/env bash
# Install Debian's headless-capable Chromium so that tests/test_report.py can render the HTML
# report and take a screenshot. Needs root (or sudo). Idempotent: does nothing when
# /usr/bin/chromium is already there.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    echo "install_chromium: $(/usr/bin/chromium --version 2>/dev/null || echo chromium) already installed"
    exit 0
fi

bash "$(dirname "$0")/apt_install.sh" install_chromium chromium
echo "install_chromium: installed $(/usr/bin/chromium --version 2>/dev/null || echo chromium)"
