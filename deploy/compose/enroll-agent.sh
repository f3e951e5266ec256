#!/usr/bin/env bash
# One-shot bootstrap of compose.yaml's agent: enroll it once, with a fresh join token.
# Runs in the `enroll-agent` service with both data volumes mounted; the control plane is
# already healthy (depends_on), so its CA and database exist.
set -euo pipefail

if [[ -f /var/lib/meridian/agent/identity.json ]]; then
    echo "agent already enrolled; nothing to do"
    exit 0
fi

# `tokens create` prints the token alone on stdout (its advice goes to stderr). A short TTL:
# it is used within the second.
token=$(meridian tokens create --data-dir /var/lib/meridian/server \
    --environment compose --label site=compose --ttl 300)

# Enrollment dials the client port by the service name, which the server certificate covers
# (--server-name); the private key is generated here and stays in the agent's volume.
meridian agent enroll --control-plane control-plane:7443 \
    --ca-file /var/lib/meridian/server/tls/ca.crt --token "$token" \
    --data-dir /var/lib/meridian/agent --name compose-agent-1
