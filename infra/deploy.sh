#!/usr/bin/env bash
# Build the image and deploy the stack (sam build, sam deploy), then point the AWS Batch job definition at
# the image just deployed (a second, parameter-only sam deploy; the job definition cannot read the function's
# image by itself). Needs Docker (sam build), AWS credentials, and models/emotion.onnx.
#
#   First deploy:  VPC_ID=vpc-... SUBNET_IDS=subnet-a,subnet-b infra/deploy.sh
#                  (the default VPC's subnets: aws ec2 describe-subnets --filters Name=default-for-az,Values=true)
#   Later:         infra/deploy.sh            (VPC and subnets are kept from the last deploy)
#   Extra arguments go to both sam deploy calls, e.g. --region eu-west-1 --stack-name emotion-test.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${DEPLOY_VENV:-.venv-deploy}"
SAM="$VENV/bin/sam"
export SAM_CLI_TELEMETRY=0

[[ -x "$SAM" ]] || { echo "error: $SAM missing: run 'make setup-deploy'" >&2; exit 1; }
[[ -f models/emotion.onnx ]] || { echo "error: models/emotion.onnx missing: run 'make export' first" >&2; exit 1; }

overrides=()
[[ -n "${VPC_ID:-}" ]] && overrides+=("VpcId=$VPC_ID")
[[ -n "${SUBNET_IDS:-}" ]] && overrides+=("SubnetIds=$SUBNET_IDS")

"$SAM" build
if ((${#overrides[@]})); then
  "$SAM" deploy --parameter-overrides "${overrides[@]}" "$@"
else
  "$SAM" deploy "$@"
fi

# The deployed function's image URI -> BatchImageUri (only when it changed). boto3 comes with SAM CLI.
uri=$("$VENV/bin/python" - "$@" <<'PY'
import sys, tomllib, boto3
config = tomllib.load(open("samconfig.toml", "rb"))["default"]["global"]["parameters"]
args = sys.argv[1:]
def option(name, default):
    return args[args.index(name) + 1] if name in args else default
stack = option("--stack-name", config["stack_name"])
region = option("--region", config["region"])
cfn = boto3.client("cloudformation", region_name=region)
described = cfn.describe_stacks(StackName=stack)["Stacks"][0]
outputs = {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])}
params = {p["ParameterKey"]: p.get("ParameterValue", "") for p in described.get("Parameters", [])}
image = boto3.client("lambda", region_name=region).get_function(
    FunctionName=outputs["ScoringFunctionName"])["Code"]["ImageUri"]
print("" if params.get("BatchImageUri") == image else image)
PY
)
if [[ -n "$uri" ]]; then
  echo "pointing the Batch job definition at $uri"
  "$SAM" deploy --parameter-overrides "BatchImageUri=$uri" "$@"
else
  echo "Batch job definition already uses the deployed image"
fi
