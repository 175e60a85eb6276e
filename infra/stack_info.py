"""What infra/deploy.sh needs to know about the deployed stack (run with the deploy venv's Python: boto3 comes
with SAM CLI). Extra arguments are deploy.sh's own (--stack-name, --region), read as sam deploy reads them.

    python infra/stack_info.py params [sam args]   -> "<Architecture> <BatchImageUri or ->" ("- -" if no stack)
    python infra/stack_info.py image [sam args]    -> the function's image URI if the job definition lacks it
    python infra/stack_info.py buckets [sam args]  -> "<input bucket> <output bucket>" ("- -" if no stack)
"""
from __future__ import annotations

import sys
import tomllib


def option(args: list[str], name: str, default: str) -> str:
    return args[args.index(name) + 1] if name in args and args.index(name) + 1 < len(args) else default


def main(mode: str, args: list[str]) -> str:
    import boto3
    from botocore.exceptions import ClientError

    config = tomllib.load(open("samconfig.toml", "rb"))["default"]["global"]["parameters"]
    stack = option(args, "--stack-name", config["stack_name"])
    region = option(args, "--region", config["region"])
    try:
        described = boto3.client("cloudformation", region_name=region).describe_stacks(StackName=stack)["Stacks"][0]
    except ClientError:
        return "- -" if mode in ("params", "buckets") else ""
    params = {p["ParameterKey"]: p.get("ParameterValue", "") for p in described.get("Parameters", [])}
    if mode == "params":
        return f"{params.get('Architecture') or '-'} {params.get('BatchImageUri') or '-'}"
    outputs = {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])}
    if mode == "buckets":
        return f"{outputs.get('InputBucketName', '-')} {outputs.get('OutputBucketName', '-')}"
    image = boto3.client("lambda", region_name=region).get_function(
        FunctionName=outputs["ScoringFunctionName"])["Code"]["ImageUri"]
    return "" if params.get("BatchImageUri") == image else image


if __name__ == "__main__":
    print(main(sys.argv[1], sys.argv[2:]))
