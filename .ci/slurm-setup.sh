#!/usr/bin/env bash
# Installs the system packages the Slurm provider's integration tests run against:
# Debian's slurm-wlm (slurmctld, slurmd, sbatch, squeue, scontrol, scancel, sinfo) and munge.
#
# Idempotent: does nothing when sbatch, slurmctld, slurmd and munged are already on PATH.
# It never starts or enables daemons: tests/providers/slurm_cluster.py starts a private
# single-node cluster (own config, ports and munge socket) and stops it by PID.
# Without apt-get (not Debian/Ubuntu) or without root it prints a note and exits 0: the Slurm
# tests then skip with a reason that names this script.
set -euo pipefail

have_all() {
  command -v sbatch >/dev/null 2>&1 &&
    command -v slurmctld >/dev/null 2>&1 &&
    command -v slurmd >/dev/null 2>&1 &&
    { command -v munged >/dev/null 2>&1 || [ -x /usr/sbin/munged ]; }
}

if have_all; then
  echo "slurm-setup: slurm-wlm and munge already installed"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "slurm-setup: apt-get not found; install slurm-wlm and munge yourself" \
    "(the Slurm tests are skipped until then)"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "slurm-setup: not root and no passwordless sudo; install slurm-wlm and munge yourself" \
      "(the Slurm tests are skipped until then)"
    exit 0
  fi
fi

export DEBIAN_FRONTEND=noninteractive
# policy-rc.d exit 101 keeps the packages' maintainer scripts from starting munge/slurm
# services on hosts where invoke-rc.d is active; the tests run their own private daemons.
POLICY=/usr/sbin/policy-rc.d
CREATED_POLICY=0
if [ ! -e "$POLICY" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
  $SUDO chmod 755 "$POLICY"
  CREATED_POLICY=1
fi
cleanup() {
  if [ "$CREATED_POLICY" -eq 1 ]; then
    $SUDO rm -f "$POLICY"
  fi
}
trap cleanup EXIT

echo "slurm-setup: installing slurm-wlm and munge with apt-get"
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null

if have_all; then
  # Single quotes: ${Version} is dpkg-query's field, not a shell variable (set -u).
  version=$(dpkg-query -W -f='${Version}' slurm-wlm 2>/dev/null || echo "?")
  echo "slurm-setup: done (slurm-wlm $version)"
else
  echo "slurm-setup: apt-get finished but slurm binaries are still missing" >&2
  exit 1
fi
