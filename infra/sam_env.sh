# Sourced by deploy.sh and teardown.sh: the repository root, the deploy venv's SAM CLI (its own venv: it pins
# boto3), no telemetry.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${DEPLOY_VENV:-.venv-deploy}"
SAM="$VENV/bin/sam"
export SAM_CLI_TELEMETRY=0
[[ -x "$SAM" ]] || { echo "error: $SAM missing: run 'make setup-deploy'" >&2; exit 1; }
