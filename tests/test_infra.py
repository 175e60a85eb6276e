"""The deployment files say what docs/cloud.md promises: no recursive trigger, private encrypted TLS-only
buckets, partial batch failures, a dead-letter queue, least-privilege roles, one image for Lambda and
Batch. Plus `sam validate --lint` and cfn-lint (offline) when the deploy virtualenv is installed."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib

import pytest
import yaml

from tests.conftest import REPO

TEMPLATE = REPO / "template.yaml"
DOCKERFILE = REPO / "infra" / "Dockerfile"
SAM = REPO / ".venv-deploy" / "bin" / "sam"


class CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags: !Ref X -> {"Ref": X}, !GetAtt A.B -> {"Fn::GetAtt": [A, B]}."""


def _construct(loader: CfnLoader, tag_suffix: str, node: yaml.Node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if tag_suffix == "Ref":
        return {"Ref": value}
    if tag_suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{tag_suffix}": value}


CfnLoader.add_multi_constructor("!", _construct)


@pytest.fixture(scope="module")
def template() -> dict:
    return yaml.load(TEMPLATE.read_text(), Loader=CfnLoader)


def of_type(template: dict, kind: str) -> dict[str, dict]:
    return {name: r for name, r in template["Resources"].items() if r["Type"] == kind}


def refers_to(value, resource: str) -> bool:
    """Whether an intrinsic-laden value points at `resource` (Ref, GetAtt, or ${resource...} in a Sub)."""
    text = repr(value)
    return (f"'Ref': '{resource}'" in text or f"'Fn::GetAtt': ['{resource}'," in text
            or re.search(r"\$\{" + resource + r"[.}]", text) is not None)


def statements(template: dict, role_type: str = "AWS::IAM::Role") -> list[tuple[str, dict]]:
    found = []
    for name, role in of_type(template, role_type).items():
        for policy in role["Properties"].get("Policies", []):
            for statement in policy["PolicyDocument"]["Statement"]:
                found.append((name, statement))
    return found


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def test_no_bucket_both_triggers_the_function_and_receives_its_output(template):
    buckets = of_type(template, "AWS::S3::Bucket")
    triggering = {name for name, b in buckets.items() if b["Properties"].get("NotificationConfiguration")}
    function = template["Resources"]["ScoringFunction"]["Properties"]
    output_bucket = function["Environment"]["Variables"]["OUTPUT_BUCKET"]["Ref"]
    writable = {name for name in buckets for _, s in statements(template)
                if s["Effect"] == "Allow" and "s3:PutObject" in as_list(s["Action"]) and refers_to(s["Resource"], name)}
    assert triggering == {"InputBucket"} and output_bucket == "OutputBucket"
    assert writable == {"OutputBucket"}
    assert not triggering & writable


def test_every_bucket_blocks_public_access_and_is_encrypted(template):
    buckets = of_type(template, "AWS::S3::Bucket")
    assert len(buckets) == 2
    for name, bucket in buckets.items():
        props = bucket["Properties"]
        assert props["PublicAccessBlockConfiguration"] == {"BlockPublicAcls": True, "BlockPublicPolicy": True,
                                                           "IgnorePublicAcls": True, "RestrictPublicBuckets": True}, name
        rule = props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
        assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms"), name


def test_every_bucket_denies_requests_without_tls(template):
    policies = of_type(template, "AWS::S3::BucketPolicy").values()
    for name in of_type(template, "AWS::S3::Bucket"):
        denials = [s for p in policies if p["Properties"]["Bucket"] == {"Ref": name}
                   for s in p["Properties"]["PolicyDocument"]["Statement"]
                   if s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}]
        assert len(denials) == 1, name
        resources = as_list(denials[0]["Resource"])
        assert denials[0]["Principal"] == "*" and denials[0]["Action"] in ("s3:*", ["s3:*"])
        assert {"Fn::GetAtt": [name, "Arn"]} in resources and {"Fn::Sub": f"${{{name}.Arn}}/*"} in resources


def test_uploads_reach_the_function_through_a_queue_with_a_dead_letter_queue(template):
    notification = template["Resources"]["InputBucket"]["Properties"]["NotificationConfiguration"]
    [queue_config] = notification["QueueConfigurations"]
    assert queue_config["Event"] == "s3:ObjectCreated:*" and refers_to(queue_config["Queue"], "UploadsQueue")
    queue = template["Resources"]["UploadsQueue"]["Properties"]
    assert refers_to(queue["RedrivePolicy"]["deadLetterTargetArn"], "UploadsDeadLetterQueue")
    assert 1 <= queue["RedrivePolicy"]["maxReceiveCount"] <= 10
    params = template["Parameters"]
    assert queue["VisibilityTimeout"] == {"Ref": "QueueVisibilityTimeout"}
    assert params["QueueVisibilityTimeout"]["Default"] >= 6 * params["Timeout"]["Default"]
    assert params["Timeout"]["MaxValue"] <= 900


def test_queue_accepts_notifications_only_from_the_input_bucket(template):
    policy = template["Resources"]["UploadsQueuePolicy"]["Properties"]
    [statement] = policy["PolicyDocument"]["Statement"]
    assert statement["Principal"] == {"Service": "s3.amazonaws.com"} and statement["Action"] == "sqs:SendMessage"
    bucket_name = template["Resources"]["InputBucket"]["Properties"]["BucketName"]["Fn::Sub"]
    assert statement["Condition"]["ArnEquals"]["aws:SourceArn"] == {"Fn::Sub": f"arn:aws:s3:::{bucket_name}"}
    assert "UploadsQueuePolicy" in as_list(template["Resources"]["InputBucket"]["DependsOn"])


def test_sqs_event_source_reports_batch_item_failures(template):
    function = template["Resources"]["ScoringFunction"]["Properties"]
    [event] = function["Events"].values()
    assert event["Type"] == "SQS" and refers_to(event["Properties"]["Queue"], "UploadsQueue")
    assert event["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]


def test_roles_are_least_privilege(template):
    allowed = [(role, s) for role, s in statements(template) if s["Effect"] == "Allow"]
    for role, statement in allowed:
        actions = as_list(statement["Action"])
        assert not any(a == "*" or a.endswith(":*") for a in actions), (role, actions)
        assert statement["Resource"] != "*", (role, statement)
    put = [(role, s) for role, s in allowed if "s3:PutObject" in as_list(s["Action"])]
    assert {role for role, _ in put} == {"ScoringFunctionRole", "BatchJobRole"}
    assert all(s["Resource"] == {"Fn::Sub": "${OutputBucket.Arn}/*"} for _, s in put)
    reads = [s for _, s in allowed if {"s3:GetObject", "s3:ListBucket"} & set(as_list(s["Action"]))]
    assert reads and all(refers_to(s["Resource"], "InputBucket") and not refers_to(s["Resource"], "OutputBucket")
                         for s in reads)
    function = template["Resources"]["ScoringFunction"]["Properties"]
    assert function["Role"] == {"Fn::GetAtt": ["ScoringFunctionRole", "Arn"]} and "Policies" not in function
    sqs = [s for _, s in allowed if any(a.startswith("sqs:") for a in as_list(s["Action"]))]
    assert [s["Resource"] for s in sqs] == [{"Fn::GetAtt": ["UploadsQueue", "Arn"]}]


def test_function_is_the_container_image_built_from_infra_dockerfile(template):
    function = template["Resources"]["ScoringFunction"]
    assert function["Properties"]["PackageType"] == "Image"
    assert function["Metadata"]["DockerContext"] == "."
    assert (REPO / function["Metadata"]["Dockerfile"]) == DOCKERFILE
    for name in ("MemorySize", "Timeout"):
        assert function["Properties"][name] == {"Ref": name}
    assert {"MemorySize", "Timeout", "ReservedConcurrency", "BatchMaxvCpus"} <= set(template["Parameters"])


def test_batch_runs_the_cli_on_fargate_with_the_same_image(template):
    resources = template["Resources"]
    compute = resources["BatchComputeEnvironment"]["Properties"]["ComputeResources"]
    assert compute["Type"] == "FARGATE" and compute["Subnets"] == {"Ref": "SubnetIds"}
    assert compute["MaxvCpus"] == {"Ref": "BatchMaxvCpus"}
    assert template["Parameters"]["SubnetIds"]["Type"] == "List<AWS::EC2::Subnet::Id>"
    job = resources["BatchJobDefinition"]["Properties"]
    assert job["PlatformCapabilities"] == ["FARGATE"]
    container = job["ContainerProperties"]
    assert container["Image"] == {"Ref": "BatchImageUri"}
    assert container["Command"][:4] == ["python", "-m", "batch_job", "run"]
    assert refers_to(job["Parameters"]["output"], "OutputBucket") and refers_to(job["Parameters"]["source"], "InputBucket")
    assert set(template["Outputs"]) >= {"InputBucketName", "OutputBucketName", "UploadsQueueUrl", "BatchJobQueueArn"}


def test_dockerfile_builds_one_small_image_for_lambda_and_batch():
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM public\.ecr\.aws/lambda/python:3\.12$", text, re.M)
    assert "-r /tmp/runtime.txt" in text and "COPY requirements/runtime.txt" in text
    assert 'CMD ["batch_job.handler.handler"]' in text
    lines = (REPO / "requirements" / "runtime.txt").read_text().lower().splitlines()
    packages = {re.split(r"[=<>~! \[;]", line.strip())[0] for line in lines if line.strip() and line[0] != "#"}
    assert "onnxruntime" in packages and not packages & {"tensorflow", "tensorflow-cpu", "keras", "pandas"}
    from batch_job import handler
    assert callable(handler.handler)


def test_dockerignore_sends_only_what_the_dockerfile_copies():
    lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*"  # everything out by default: no .venv, runs/, datasets in the build context
    included = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = {m.group(1).rstrip("/") for m in re.finditer(r"^COPY (\S+) ", DOCKERFILE.read_text(), re.M)}
    assert copied and copied <= included


def test_entrypoint_runs_commands_itself_and_hands_handler_names_to_lambda(tmp_path):
    entrypoint = REPO / "infra" / "entrypoint.sh"
    env = {**os.environ, "LAMBDA_TASK_ROOT": str(tmp_path)}
    command = subprocess.run(["sh", str(entrypoint), "python3", "-c", "import os; print(os.environ['PYTHONPATH'])"],
                             capture_output=True, text=True, env=env, timeout=30)
    assert command.returncode == 0 and command.stdout.split(":")[0].strip() == str(tmp_path)
    lambda_ = subprocess.run(["sh", str(entrypoint), "batch_job.handler.handler"], capture_output=True, text=True,
                             env=env, timeout=30)
    assert lambda_.returncode != 0 and "/lambda-entrypoint.sh" in lambda_.stderr  # not in this machine


def test_samconfig_deploys_with_iam_capability_and_sam_managed_image_repos():
    config = tomllib.loads((REPO / "samconfig.toml").read_text())["default"]
    assert config["global"]["parameters"]["stack_name"] and config["global"]["parameters"]["region"]
    deploy = config["deploy"]["parameters"]
    assert deploy["capabilities"] == "CAPABILITY_IAM" and deploy["resolve_image_repos"] is True


needs_sam = pytest.mark.skipif(not SAM.exists(), reason=f"{SAM} not installed (make setup-deploy)")


@needs_sam
def test_template_passes_sam_validate_lint_and_cfn_lint_offline():
    result = subprocess.run(["bash", str(REPO / "infra" / "validate.sh")], capture_output=True, text=True,
                            timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid SAM Template" in result.stdout


@needs_sam
def test_validate_script_fails_on_a_broken_template(tmp_path):
    broken = tmp_path / "template.yaml"
    broken.write_text(TEMPLATE.read_text().replace("SSEAlgorithm: AES256", "SSEAlgorithm: AES257"))
    result = subprocess.run(["bash", str(REPO / "infra" / "validate.sh"), str(broken)], capture_output=True,
                            text=True, timeout=600, cwd=REPO)
    assert result.returncode != 0 and "AES257" in result.stdout + result.stderr


def test_validate_script_is_executable():
    assert shutil.which(str(REPO / "infra" / "validate.sh"))
