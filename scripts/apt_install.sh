#!/usr/bin/env bash
# Install Debian packages with apt-get, as root or through sudo, quietly and non-interactively.
# Usage: apt_install.sh LABEL [apt-get install options] PACKAGE...
# Shared by install_chromium.sh and install_slurm.sh, which first check whether anything is needed.
set -euo pipefail

label=$1
shift
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "$label: needs root (or sudo) to run apt-get" >&2
        exit 1
    fi
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "$label: apt-get not found; install $(printf "%s " "$@" | sed "s/--[^ ]* //g")with your package manager" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq "$@" >/dev/null
