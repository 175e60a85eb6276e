#!/usr/bin/env bash
# Offline checks of the SAM template: `sam validate --lint` (SAM transform + cfn-lint rules), plain cfn-lint,
# and cfn-lint on the state machine definition files (infra/*.asl.json), which neither opens by itself.
# No AWS account, credentials or network needed. Exits non-zero if any finds a problem.
#   Setup once: python3 -m venv .venv-deploy && .venv-deploy/bin/pip install -r requirements/deploy.txt
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${DEPLOY_VENV:-.venv-deploy}"
TEMPLATE="${1:-template.yaml}"
if [[ ! -x "$VENV/bin/sam" || ! -x "$VENV/bin/cfn-lint" ]]; then
  echo "error: $VENV/bin/sam or cfn-lint missing: run 'make setup-deploy'" >&2
  exit 1
fi
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"  # the lint rules are per region
export SAM_CLI_TELEMETRY=0
"$VENV/bin/sam" validate --lint --template "$TEMPLATE"
"$VENV/bin/cfn-lint" "$TEMPLATE"
definitions="$(mktemp "${TMPDIR:-/tmp}/definitions.XXXXXX")"  # JSON is YAML: cfn-lint reads it either way
trap 'rm -f "$definitions"' EXIT
"$VENV/bin/python" infra/lint_definitions.py "$TEMPLATE" > "$definitions"
"$VENV/bin/cfn-lint" "$definitions"
echo "ok: $TEMPLATE and its state machine definitions pass sam validate --lint and cfn-lint"
