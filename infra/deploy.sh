#!/usr/bin/env bash
# Build the image for the stack's architecture and deploy (sam build, sam deploy), then point the AWS Batch job
# definition at the image just deployed (a second, parameter-only sam deploy; the job definition cannot read
# the function's image by itself). Needs Docker (sam build), AWS credentials, and models/emotion.onnx.
#
#   First deploy:  VPC_ID=vpc-... SUBNET_IDS=subnet-a,subnet-b infra/deploy.sh
#                  (the default VPC's subnets: aws ec2 describe-subnets --filters Name=default-for-az,Values=true)
#   Later:         infra/deploy.sh            (VPC and subnets are kept from the last deploy)
#   Graviton:      ARCHITECTURE=arm64 infra/deploy.sh   (kept for later deploys too)
#   Extra arguments go to both sam deploy calls, e.g. --region eu-west-1 --stack-name emotion-test.
#
# The image is built for the architecture the stack will run (ARCHITECTURE, else the deployed stack's, else
# x86_64): an arm64 stack with an x86_64 image fails every call with "exec format error". Every deploy passes
# the deployed BatchImageUri on, so a value saved by `sam deploy --guided` (empty) never deletes the job
# definition.
source "$(dirname "$0")/sam_env.sh"
[[ -f models/emotion.onnx ]] || { echo "error: models/emotion.onnx missing: run 'make export' first" >&2; exit 1; }

read -r deployed_arch deployed_image < <("$VENV/bin/python" infra/stack_info.py params "$@")
arch="${ARCHITECTURE:-}"
[[ -z "$arch" && "$deployed_arch" != "-" ]] && arch="$deployed_arch"
arch="${arch:-x86_64}"
[[ "$arch" == "x86_64" || "$arch" == "arm64" ]] || { echo "error: ARCHITECTURE must be x86_64 or arm64, not $arch" >&2; exit 2; }

overrides=("Architecture=$arch")
[[ -n "${VPC_ID:-}" ]] && overrides+=("VpcId=$VPC_ID")
[[ -n "${SUBNET_IDS:-}" ]] && overrides+=("SubnetIds=$SUBNET_IDS")
[[ "$deployed_image" != "-" ]] && overrides+=("BatchImageUri=$deployed_image")

echo "building the image for $arch"
"$SAM" build --parameter-overrides "Architecture=$arch"
"$SAM" deploy --parameter-overrides "${overrides[@]}" "$@"

uri=$("$VENV/bin/python" infra/stack_info.py image "$@")
if [[ -n "$uri" ]]; then
  echo "pointing the Batch job definition at $uri"
  "$SAM" deploy --parameter-overrides "Architecture=$arch" "BatchImageUri=$uri" "$@"
else
  echo "Batch job definition already uses the deployed image"
fi
