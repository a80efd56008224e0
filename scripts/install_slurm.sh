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

bash "$(dirname "$0")/apt_install.sh" install_slurm --no-install-recommends slurm-wlm munge
echo "install_slurm: installed $(slurmctld -V 2>/dev/null || echo slurm) and $(munged --version 2>/dev/null | head -n1 || echo munge)"
