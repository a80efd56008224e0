#!/usr/bin/env bash
# Install a SLURM controller, compute daemon and MUNGE authentication (Debian/Ubuntu packages) so
# that tests/test_slurm.py can start a one-node cluster on this machine. Needs root (or sudo).
# Idempotent: does nothing when the daemons are already installed.
set -euo pipefail

if command -v slurmctld >/dev/null 2>&1 && command -v slurmd >/dev/null 2>&1 \
    && command -v munged >/dev/null 2>&1 && command -v sbatch >/dev/null 2>&1; then
    echo "install_slurm: slurm-wlm and munge already installed"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install_slurm: needs root (or sudo) to run apt-get" >&2
        exit 1
    fi
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_slurm: apt-get not found; install slurm-wlm and munge with your package manager" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
echo "install_slurm: installed $(slurmctld -V 2>/dev/null || echo slurm) and $(munged --version 2>/dev/null | head -n1 || echo munge)"
