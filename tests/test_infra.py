"""The deployment files say what docs/cloud.md promises: no recursive trigger, private encrypted TLS-only
buckets, partial batch failures, a dead-letter queue, least-privilege roles, one image for Lambda, the bulk
path and Batch; the state machine definition and the deploy-time fixes (concurrency, visibility timeout,
vCPUs, private subnets, logs, multipart uploads, trust policies, alarms, arm64). Plus `sam validate --lint`
and cfn-lint (offline, the definition file too) when the deploy virtualenv is installed."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib

import pytest
import yaml

from batch_job.shard import parse_shard
from tests.conftest import REPO

TEMPLATE = REPO / "template.yaml"
DOCKERFILE = REPO / "infra" / "Dockerfile"
SAM = REPO / ".venv-deploy" / "bin" / "sam"
ASL = REPO / "infra" / "bulk.asl.json"
FUNCTIONS = ("ScoringFunction", "BulkScoringFunction")


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
    output_bucket = template["Globals"]["Function"]["Environment"]["Variables"]["OUTPUT_BUCKET"]["Ref"]
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
    assert params["Timeout"]["Default"] in params["Timeout"]["AllowedValues"] and max(params["Timeout"]["AllowedValues"]) <= 900


def test_queue_visibility_timeout_is_derived_from_the_function_timeout(template):
    """One parameter, not two to keep in step: every allowed Timeout maps to a visibility of 6x it."""
    queue = template["Resources"]["UploadsQueue"]["Properties"]
    assert queue["VisibilityTimeout"] == {"Fn::FindInMap": ["QueueVisibility", {"Ref": "Timeout"}, "Seconds"]}
    table = template["Mappings"]["QueueVisibility"]
    allowed = template["Parameters"]["Timeout"]["AllowedValues"]
    assert sorted(int(k) for k in table) == sorted(allowed)
    assert all(table[str(t)]["Seconds"] == 6 * t <= 43200 for t in allowed)
    assert "QueueVisibilityTimeout" not in template["Parameters"]
    assert template["Globals"]["Function"]["Timeout"] == {"Ref": "Timeout"}


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


LOG_DELIVERY = {"logs:CreateLogDelivery", "logs:GetLogDelivery", "logs:UpdateLogDelivery", "logs:DeleteLogDelivery",
                "logs:ListLogDeliveries", "logs:PutResourcePolicy", "logs:DescribeResourcePolicies",
                "logs:DescribeLogGroups"}


def test_roles_are_least_privilege(template):
    allowed = [(role, s) for role, s in statements(template) if s["Effect"] == "Allow"]
    for role, statement in allowed:
        actions = as_list(statement["Action"])
        assert not any(a == "*" or a.endswith(":*") for a in actions), (role, actions)
        # CloudWatch Logs delivery (the state machine's logging) takes no resource: AWS documents "*" for it
        if not all(a in LOG_DELIVERY for a in actions):
            assert statement["Resource"] != "*", (role, statement)
    put = [(role, s) for role, s in allowed if "s3:PutObject" in as_list(s["Action"])]
    assert {role for role, _ in put} == {"ScoringFunctionRole", "BatchJobRole", "BulkScoringFunctionRole",
                                         "BulkStateMachineRole"}
    assert all(s["Resource"] in ({"Fn::Sub": "${OutputBucket.Arn}/*"}, {"Fn::Sub": "${OutputBucket.Arn}/*/_map/*"})
               for _, s in put)
    reads = [s for _, s in allowed if {"s3:GetObject", "s3:ListBucket"} & set(as_list(s["Action"]))]
    assert reads and all(refers_to(s["Resource"], "InputBucket") for s in reads
                         if not refers_to(s["Resource"], "OutputBucket"))
    # the output bucket is read only where Step Functions writes: map-run results and inventory manifests
    output_reads = {s["Resource"]["Fn::Sub"] for s in reads if refers_to(s["Resource"], "OutputBucket")}
    assert output_reads == {"${OutputBucket.Arn}/*/_map/*", "${OutputBucket.Arn}/inventory/*"}
    for name in FUNCTIONS:
        function = template["Resources"][name]["Properties"]
        assert function["Role"] == {"Fn::GetAtt": [f"{name}Role", "Arn"]} and "Policies" not in function
    sqs = [s for _, s in allowed if any(a.startswith("sqs:") for a in as_list(s["Action"]))]
    assert [s["Resource"] for s in sqs] == [{"Fn::GetAtt": ["UploadsQueue", "Arn"]}]


def test_functions_are_the_container_image_built_from_infra_dockerfile(template):
    for name in FUNCTIONS:
        function = template["Resources"][name]
        assert function["Properties"]["PackageType"] == "Image"
        assert function["Metadata"]["DockerContext"] == "."
        assert (REPO / function["Metadata"]["Dockerfile"]) == DOCKERFILE
    shared = template["Globals"]["Function"]
    for name in ("MemorySize", "Timeout"):
        assert shared[name] == {"Ref": name}
    assert {"MemorySize", "Timeout", "ReservedConcurrency", "BatchMaxvCpus"} <= set(template["Parameters"])


def test_environment_lives_in_globals_so_both_functions_get_every_variable(template):
    assert set(template["Globals"]["Function"]["Environment"]["Variables"]) >= {"OUTPUT_BUCKET", "OUTPUT_PREFIX"}
    assert all("Environment" not in template["Resources"][name]["Properties"] for name in FUNCTIONS)


def test_bulk_function_runs_the_bulk_handler_and_reserves_only_when_asked(template):
    import importlib

    function = template["Resources"]["BulkScoringFunction"]["Properties"]
    [command] = function["ImageConfig"]["Command"]
    module, _, name = command.rpartition(".")
    assert callable(getattr(importlib.import_module(module), name))
    # a reservation can fail the deploy in a new account (limit 10): opt-in, 0 = none, the default
    assert function["ReservedConcurrentExecutions"] == {
        "Fn::If": ["HasBulkReservedConcurrency", {"Ref": "BulkReservedConcurrency"}, {"Ref": "AWS::NoValue"}]}
    assert template["Conditions"]["HasBulkReservedConcurrency"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "BulkReservedConcurrency"}, 0]}]}
    params = template["Parameters"]
    assert params["BulkReservedConcurrency"]["Default"] == 0 and params["ReservedConcurrency"]["Default"] == 0
    from batch_job.sizing import BULK_TIMEOUT

    assert function["Timeout"] == BULK_TIMEOUT < 300 / 2  # a timed-out batch and its retry fit in EXPRESS's 5 min
    assert params["BulkMaxConcurrency"]["Default"] <= 30  # ~5,500 GET/s per S3 prefix partition


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
    shard = container["Command"].index("--shard")
    assert container["Command"][shard + 1] == "Ref::shard" and parse_shard(job["Parameters"]["shard"]) == (0, 1)
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
    copied = {source.rstrip("/") for m in re.finditer(r"^COPY (.+)$", DOCKERFILE.read_text(), re.M)
              for source in m.group(1).split()[:-1]}  # every source of each COPY (the last word is the target)
    assert copied and copied <= included
    assert {"models/emotion.onnx", "models/face_detection_yunet.onnx"} <= copied  # both models in the image


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
    assert deploy["resolve_s3"] is True  # the state machine's definition file is uploaded to S3


needs_sam = pytest.mark.skipif(not SAM.exists(), reason=f"{SAM} not installed (make setup-deploy)")


@needs_sam
def test_template_passes_sam_validate_lint_and_cfn_lint_offline():
    result = subprocess.run(["bash", str(REPO / "infra" / "validate.sh")], capture_output=True, text=True,
                            timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid SAM Template" in result.stdout and "state machine definitions pass" in result.stdout


@needs_sam
def test_validate_script_checks_the_state_machine_definition_file(tmp_path):
    (tmp_path / "infra").mkdir()
    (tmp_path / "template.yaml").write_text(TEMPLATE.read_text())
    (tmp_path / "infra" / "bulk.asl.json").write_text(ASL.read_text().replace('"Type": "Pass"', '"Type": "Passs"'))
    result = subprocess.run(["bash", str(REPO / "infra" / "validate.sh"), str(tmp_path / "template.yaml")],
                            capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode != 0 and "E3601" in result.stdout + result.stderr


@needs_sam
def test_validate_script_fails_on_a_broken_template(tmp_path):
    broken = tmp_path / "template.yaml"
    broken.write_text(TEMPLATE.read_text().replace("SSEAlgorithm: AES256", "SSEAlgorithm: AES257"))
    result = subprocess.run(["bash", str(REPO / "infra" / "validate.sh"), str(broken)], capture_output=True,
                            text=True, timeout=600, cwd=REPO)
    assert result.returncode != 0 and "AES257" in result.stdout + result.stderr


def test_validate_script_is_executable():
    assert shutil.which(str(REPO / "infra" / "validate.sh"))


# ---- the bulk path: state machine definition (infra/bulk.asl.json) and its wiring ----

@pytest.fixture(scope="module")
def definition() -> dict:
    return json.loads(ASL.read_text())


def map_states(definition: dict) -> dict[str, dict]:
    return {name: s for name, s in definition["States"].items() if s["Type"] == "Map"}


def test_state_machine_is_standard_with_its_definition_in_its_own_file(template):
    machine = template["Resources"]["BulkStateMachine"]
    assert machine["Type"] == "AWS::Serverless::StateMachine" and machine["Properties"]["Type"] == "STANDARD"
    assert REPO / machine["Properties"]["DefinitionUri"] == ASL
    assert machine["Properties"]["Role"] == {"Fn::GetAtt": ["BulkStateMachineRole", "Arn"]}
    assert template["Outputs"]["BulkStateMachineArn"]["Value"] == {"Ref": "BulkStateMachine"}


def test_definition_parses_and_names_the_function_the_concurrency_parameter_and_the_result_writer_bucket(
        template, definition):
    text = ASL.read_text()
    substitutions = template["Resources"]["BulkStateMachine"]["Properties"]["DefinitionSubstitutions"]
    assert set(re.findall(r"\$\{(\w+)\}", text)) == set(substitutions)  # nothing unfilled, nothing unused
    assert substitutions["BulkScoringFunctionArn"] == {"Fn::GetAtt": ["BulkScoringFunction", "Arn"]}
    assert substitutions["BulkMaxConcurrency"] == {"Ref": "BulkMaxConcurrency"}
    assert substitutions["OutputBucket"] == {"Ref": "OutputBucket"}
    assert "BulkMaxConcurrency" in template["Parameters"]
    settings = definition["States"][definition["StartAt"]]
    assert settings["Parameters"]["max_concurrency.$"] == "States.StringToJson('${BulkMaxConcurrency}')"
    maps = map_states(definition)
    assert set(maps) == {"ScoreListing", "ScoreInventory"}
    for state in maps.values():
        assert state["MaxConcurrencyPath"] == f"{settings['ResultPath']}.max_concurrency"
        assert state["ToleratedFailurePercentagePath"] == f"{settings['ResultPath']}.tolerated_failure_percentage"
        assert state["ItemProcessor"]["ProcessorConfig"] == {"Mode": "DISTRIBUTED", "ExecutionType": "EXPRESS"}
        [task] = state["ItemProcessor"]["States"].values()
        assert task["Parameters"]["FunctionName"] == "${BulkScoringFunctionArn}" and task["Parameters"]["Payload.$"] == "$"
        writer = state["ResultWriter"]
        assert writer["Resource"] == "arn:aws:states:::s3:putObject" and writer["Parameters"]["Bucket"] == "${OutputBucket}"
        assert writer["WriterConfig"] == {"OutputType": "JSONL", "Transformation": "COMPACT"}
    assert maps["ScoreListing"]["ItemReader"]["Resource"] == "arn:aws:states:::s3:listObjectsV2"
    assert maps["ScoreInventory"]["ItemReader"]["ReaderConfig"] == {"InputType": "MANIFEST"}


def test_itembatcher_stays_under_the_payload_limit_and_carries_bucket_and_output(definition):
    for name, state in map_states(definition).items():
        batcher = state["ItemBatcher"]
        assert batcher["MaxItemsPerBatchPath"] == "$.settings.items_per_batch"  # from the Sizing mapping
        assert batcher["MaxInputBytesPerBatch"] <= 256 * 1024 - 32 * 1024  # room for BatchInput and the envelope
        assert {"bucket.$", "output.$"} <= set(batcher["BatchInput"]), name
    assert map_states(definition)["ScoreInventory"]["ItemBatcher"]["BatchInput"]["key_encoding"] == "url"
    assert "key_encoding" not in map_states(definition)["ScoreListing"]["ItemBatcher"]["BatchInput"]  # raw keys


def test_both_map_states_are_the_same_but_for_how_items_are_read(definition):
    listing, inventory = (json.loads(json.dumps(s)) for s in map_states(definition).values())
    for state in (listing, inventory):
        for field in ("ItemReader", "Comment"):
            state.pop(field)
        state["ItemBatcher"]["BatchInput"].pop("key_encoding", None)
    assert listing == inventory


def test_batches_retry_throttling_and_the_named_retryable_error(definition):
    from batch_job.bulk import TransientS3Error

    for state in map_states(definition).values():
        [task] = state["ItemProcessor"]["States"].values()
        retried = {error for rule in task["Retry"] for error in rule["ErrorEquals"]}
        assert {TransientS3Error.__name__, "Lambda.TooManyRequestsException", "Lambda.ServiceException"} <= retried
        assert all(rule["BackoffRate"] >= 2 and rule.get("JitterStrategy") == "FULL" for rule in task["Retry"])
        assert "States.ALL" not in retried  # a batch that fails for another reason is a failed item, not a loop
    summary = definition["States"]["WriteSummary"]
    assert summary["Parameters"]["Payload"]["summary"]["results.$"] == "$.map.ResultWriterDetails"
    assert summary.get("End") is True and all(s.get("Next") == "WriteSummary" for s in map_states(definition).values())


def test_state_machine_role_invokes_only_the_bulk_function_and_lists_only_the_input(template):
    role = [s for name, s in statements(template) if name == "BulkStateMachineRole"]
    invoke = [s for s in role if "lambda:InvokeFunction" in as_list(s["Action"])]
    assert [r for s in invoke for r in as_list(s["Resource"])] == [
        {"Fn::GetAtt": ["BulkScoringFunction", "Arn"]}, {"Fn::Sub": "${BulkScoringFunction.Arn}:*"}]
    lists = [s for s in role if "s3:ListBucket" in as_list(s["Action"])]
    assert [s["Resource"] for s in lists] == [{"Fn::GetAtt": ["InputBucket", "Arn"]}]
    starts = [s for s in role if "states:StartExecution" in as_list(s["Action"])]
    name = template["Resources"]["BulkStateMachine"]["Properties"]["Name"]["Fn::Sub"]
    assert [s["Resource"]["Fn::Sub"].endswith(f":stateMachine:{name}") for s in starts] == [True]


# ---- the deploy-time fixes ----

def test_reserved_concurrency_is_zero_or_at_least_two(template):
    params = template["Parameters"]["ReservedConcurrency"]
    assert params["MinValue"] == 0 and params["MaxValue"] <= 900  # 100 of the default 1,000 stay unreserved
    [assertion] = template["Rules"]["ReservedConcurrencyIsZeroOrAtLeastTwo"]["Assertions"]
    assert assertion["Assert"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "ReservedConcurrency"}, "1"]}]}


def test_batch_max_vcpus_fits_at_least_one_job(template):
    container = template["Resources"]["BatchJobDefinition"]["Properties"]["ContainerProperties"]
    vcpus = next(int(r["Value"]) for r in container["ResourceRequirements"] if r["Type"] == "VCPU")
    assert template["Parameters"]["BatchMaxvCpus"]["MinValue"] >= vcpus


def test_private_subnets_get_vpc_endpoints_or_a_nat_and_public_ip_only_in_public_ones(template):
    resources, params = template["Resources"], template["Parameters"]
    assert params["BatchNetwork"]["AllowedValues"] == ["public", "private-nat", "private-endpoints"]
    endpoints = {r["Properties"]["ServiceName"]["Fn::Sub"].rsplit(".", 1)[-1]: r
                 for r in of_type(template, "AWS::EC2::VPCEndpoint").values()}
    assert set(endpoints) == {"api", "dkr", "logs", "s3"}
    assert all(r["Condition"] == "PrivateEndpoints" for k, r in endpoints.items() if k != "s3")
    # the S3 gateway endpoint is free: private-nat gets it too (else S3 traffic pays the NAT's $0.045/GB)
    assert endpoints["s3"]["Condition"] == "PrivateBatchNetwork"
    assert template["Conditions"]["PrivateBatchNetwork"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "BatchNetwork"},
                                                                                         "public"]}]}
    assert endpoints["s3"]["Properties"]["VpcEndpointType"] == "Gateway"
    assert endpoints["s3"]["Properties"]["RouteTableIds"] == {"Ref": "RouteTableIds"}
    rule = template["Rules"]["PrivateSubnetsNeedRouteTables"]
    assert rule["RuleCondition"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "BatchNetwork"}, "public"]}]}
    network = resources["BatchJobDefinition"]["Properties"]["ContainerProperties"]["NetworkConfiguration"]
    assert network["AssignPublicIp"] == {"Fn::If": ["PublicBatchNetwork", "ENABLED", "DISABLED"]}


def test_batch_jobs_log_to_their_own_log_group_with_retention(template):
    logs = template["Resources"]["BatchJobDefinition"]["Properties"]["ContainerProperties"]["LogConfiguration"]
    assert logs["LogDriver"] == "awslogs" and logs["Options"]["awslogs-group"] == {"Ref": "BatchLogGroup"}
    assert template["Resources"]["BatchLogGroup"]["Properties"]["RetentionInDays"] <= 365
    assert all(g["Properties"].get("RetentionInDays") for g in of_type(template, "AWS::Logs::LogGroup").values())


def test_every_writer_of_csvs_may_abort_its_multipart_uploads(template):
    for role, statement in statements(template):
        actions = as_list(statement["Action"])
        if "s3:PutObject" in actions:
            assert "s3:AbortMultipartUpload" in actions, role


def test_ecs_tasks_trust_policies_name_the_source_account(template):
    trusted = [(name, s) for name, role in of_type(template, "AWS::IAM::Role").items()
               for s in role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
               if s["Principal"].get("Service") in ("ecs-tasks.amazonaws.com", "states.amazonaws.com")]
    assert {name for name, _ in trusted} == {"BatchExecutionRole", "BatchJobRole", "BulkStateMachineRole"}
    assert all(s["Condition"]["StringEquals"]["aws:SourceAccount"] == {"Ref": "AWS::AccountId"} for _, s in trusted)


def test_alarms_watch_queues_functions_runs_and_batch_jobs(template):
    alarms = {name: a["Properties"] for name, a in of_type(template, "AWS::CloudWatch::Alarm").items()}
    watched = {(a["Namespace"], a["MetricName"], json.dumps(a.get("Dimensions", [{}])[0].get("Value"))): a
               for a in alarms.values()}
    assert set(watched) == {
        ("AWS/SQS", "ApproximateNumberOfMessagesVisible", json.dumps({"Fn::GetAtt": ["UploadsDeadLetterQueue",
                                                                                      "QueueName"]})),
        ("AWS/SQS", "ApproximateAgeOfOldestMessage", json.dumps({"Fn::GetAtt": ["UploadsQueue", "QueueName"]})),
        ("AWS/Lambda", "Errors", json.dumps({"Ref": "ScoringFunction"})),
        ("AWS/Lambda", "Errors", json.dumps({"Ref": "BulkScoringFunction"})),
        ("AWS/States", "ExecutionsFailed", json.dumps({"Ref": "BulkStateMachine"})),
        ("EmotionBatch", "FailedBatches", "null"),  # partly failed runs: the final step's metric (bulk_run)
    }
    assert all(a["ComparisonOperator"] == "GreaterThanThreshold" for a in alarms.values())
    assert all(a["AlarmActions"] == {"Fn::If": ["HasAlarmEmail", [{"Ref": "AlarmTopic"}], {"Ref": "AWS::NoValue"}]}
               for a in alarms.values())
    rule = template["Resources"]["BatchJobFailedRule"]["Properties"]
    assert rule["EventPattern"]["detail"]["status"] == ["FAILED"] and rule["Targets"][0]["Arn"] == {"Ref": "AlarmTopic"}
    from batch_job.bulk_run import FAILED_BATCHES_METRIC

    assert FAILED_BATCHES_METRIC == ("EmotionBatch", "FailedBatches")


def test_arm64_is_an_option_for_the_one_image_and_x86_64_the_default(template):
    params = template["Parameters"]["Architecture"]
    assert params["Default"] == "x86_64" and params["AllowedValues"] == ["x86_64", "arm64"]
    assert template["Globals"]["Function"]["Architectures"] == [{"Ref": "Architecture"}]
    platform = template["Resources"]["BatchJobDefinition"]["Properties"]["ContainerProperties"]["RuntimePlatform"]
    assert platform["CpuArchitecture"] == {"Fn::If": ["IsArm64", "ARM64", "X86_64"]}


# ---- sizing from MemorySize (issue 19, 3) ----

def test_the_sizing_mapping_is_the_codes_table_for_every_allowed_memory(template):
    from batch_job.sizing import MEMORY_SIZES, for_memory

    params = template["Parameters"]["MemorySize"]
    assert params["AllowedValues"] == list(MEMORY_SIZES) and params["Default"] in MEMORY_SIZES
    table = template["Mappings"]["Sizing"]
    assert set(table) == {str(m) for m in MEMORY_SIZES}
    for memory in MEMORY_SIZES:
        sizing = for_memory(memory)
        assert table[str(memory)] == {"BulkItemsPerBatch": sizing.batch_items,
                                      "DecodeBudgetMB": sizing.decode_budget_mb}
    assert template["Globals"]["Function"]["Environment"]["Variables"]["DECODE_BUDGET_MB"] == {
        "Fn::FindInMap": ["Sizing", {"Ref": "MemorySize"}, "DecodeBudgetMB"]}
    machine = template["Resources"]["BulkStateMachine"]["Properties"]["DefinitionSubstitutions"]
    assert machine["BulkItemsPerBatch"] == {"Fn::FindInMap": ["Sizing", {"Ref": "MemorySize"}, "BulkItemsPerBatch"]}


def test_a_batch_of_photos_fits_half_the_bulk_timeout_and_the_budget_fits_the_memory():
    from batch_job.sizing import BULK_TIMEOUT, MEMORY_SIZES, PHOTOS_PER_VCPU_SECOND, RUNTIME_MB, for_memory

    for memory in MEMORY_SIZES:
        sizing = for_memory(memory)
        seconds = sizing.batch_items / (PHOTOS_PER_VCPU_SECOND * sizing.vcpus)
        assert seconds <= BULK_TIMEOUT / 2 or sizing.batch_items == 25, memory
        assert RUNTIME_MB + sizing.decode_budget_mb < memory, memory
    # the issue's case: 1,000 photos at 512-1,024 MB took 55-170 s, past the 120 s timeout
    assert for_memory(512).batch_items <= 200 and for_memory(1024).batch_items <= 400


def test_settings_read_the_batch_size_and_timeouts_are_retried(definition):
    assert definition["States"]["Settings"]["Parameters"]["items_per_batch.$"] == \
        "States.StringToJson('${BulkItemsPerBatch}')"
    for state in map_states(definition).values():
        [task] = state["ItemProcessor"]["States"].values()
        timeouts = [rule for rule in task["Retry"] if "Lambda.Unknown" in rule["ErrorEquals"]]
        assert len(timeouts) == 1 and timeouts[0]["MaxAttempts"] == 1  # once: the same batch again


def test_the_functions_decode_budget_follows_their_memory_unless_set(monkeypatch):
    from batch_job.runtime import Config

    env = {"OUTPUT_BUCKET": "out", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512"}
    assert Config.from_env(env).settings.decode_budget_mb == 112
    assert Config.from_env({**env, "DECODE_BUDGET_MB": "300"}).settings.decode_budget_mb == 300
    assert Config.from_env({"OUTPUT_BUCKET": "out"}).settings.decode_budget_mb == 1024  # outside Lambda


def test_the_final_step_logs_failed_batches_as_an_embedded_metric():
    from batch_job.bulk_run import failed_batches_metric

    fields = failed_batches_metric({"failed_batches": 3}, timestamp_ms=1)
    [directive] = fields["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "EmotionBatch" and directive["Metrics"][0]["Name"] == "FailedBatches"
    assert fields["FailedBatches"] == 3 and fields["_aws"]["Timestamp"] == 1


# ---- infra/deploy.sh (issue 19, 2 and 4): a fake SAM CLI records what it is asked ----

def fake_deploy(tmp_path, env: dict, params: str, image: str = "") -> list[list[str]]:
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    log = tmp_path / "sam.log"
    (venv / "sam").write_text(f'#!/bin/bash\necho "$*" >> {log}\n')
    (venv / "python").write_text(f'#!/bin/bash\nif [[ "$2" == params ]]; then echo "{params}"; else echo "{image}"; fi\n')
    for tool in ("sam", "python"):
        (venv / tool).chmod(0o755)
    result = subprocess.run(["bash", str(REPO / "infra" / "deploy.sh"), "--region", "eu-west-1"],
                            env={**os.environ, "DEPLOY_VENV": str(tmp_path / "venv"), **env}, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [line.split() for line in log.read_text().splitlines()]


def test_deploy_builds_for_the_architecture_asked_and_keeps_it(tmp_path):
    calls = fake_deploy(tmp_path, {"ARCHITECTURE": "arm64"}, params="- -", image="img@sha256:1")
    assert calls[0] == ["build", "--parameter-overrides", "Architecture=arm64"]
    assert calls[1][:2] == ["deploy", "--parameter-overrides"] and "Architecture=arm64" in calls[1]
    assert calls[2] == ["deploy", "--parameter-overrides", "Architecture=arm64", "BatchImageUri=img@sha256:1",
                        "--region", "eu-west-1"]


def test_deploy_builds_for_the_deployed_stacks_architecture_when_not_told(tmp_path):
    calls = fake_deploy(tmp_path / "a", {"ARCHITECTURE": ""}, params="arm64 -")
    assert calls[0] == ["build", "--parameter-overrides", "Architecture=arm64"]
    calls = fake_deploy(tmp_path / "b", {"ARCHITECTURE": ""}, params="- -")
    assert calls[0] == ["build", "--parameter-overrides", "Architecture=x86_64"]


def test_deploy_passes_the_deployed_batch_image_on_so_the_job_definition_survives(tmp_path):
    calls = fake_deploy(tmp_path, {"ARCHITECTURE": ""}, params="x86_64 123.dkr.ecr/emotion@sha256:9", image="")
    assert "BatchImageUri=123.dkr.ecr/emotion@sha256:9" in calls[1]  # not samconfig's empty guided value
    assert len(calls) == 2  # the image did not change: no second deploy


# ---- operations (issue 19, 12) ----

def test_every_sample_event_parses_as_the_kind_its_readme_says():
    from batch_job import bulk, events

    folder = REPO / "infra" / "events"
    kinds = {"s3-put.json": "s3", "sqs-uploads.json": "sqs", "prefix.json": "prefix"}
    for name, kind in kinds.items():
        event = json.loads((folder / name).read_text())
        assert events.event_kind(event) == kind, name
        assert name in (folder / "README.md").read_text()
    assert [o.key for o in events.s3_objects(json.loads((folder / "s3-put.json").read_text()))] == \
        ["uploads/team photo.jpg"]
    messages = events.sqs_messages(json.loads((folder / "sqs-uploads.json").read_text()))
    assert [o.key for m in messages for o in m.objects] == ["uploads/a.jpg", "uploads/b c.png"]
    parsed = bulk.parse_batch(json.loads((folder / "bulk-batch.json").read_text()))
    assert [o.key for o in parsed.objects] == ["photos/a.jpg", "photos/b c.png"] and all(o.etag for o in parsed.objects)


BOTO3_ACTIONS = {"describe_stacks": "cloudformation:DescribeStacks", "start_execution": "states:StartExecution",
                 "describe_execution": "states:DescribeExecution", "list_map_runs": "states:ListMapRuns",
                 "describe_map_run": "states:DescribeMapRun", "list_objects_v2": "s3:ListBucket",
                 "get_paginator": "s3:ListBucket", "get_object": "s3:GetObject", "put_object": "s3:PutObject",
                 "upload_file": "s3:PutObject", "delete_objects": "s3:DeleteObject", "head_bucket": "s3:ListBucket"}


def test_the_operator_policy_covers_every_call_submit_status_and_merge_make():
    policy = json.loads((REPO / "infra" / "policies" / "operator.json").read_text())
    allowed = {action for s in policy["Statement"] for action in as_list(s["Action"])}
    assert all(s["Resource"] != "*" for s in policy["Statement"])
    called = set()
    for module in ("bulk_cli.py", "bulk_run.py", "s3.py", "destinations.py"):
        source = (REPO / "batch_job" / module).read_text()
        called |= {action for call, action in BOTO3_ACTIONS.items() if f".{call}(" in source}
    assert called and called <= allowed, called - allowed


def test_teardown_keeps_the_buckets_and_says_so_first(template):
    script = (REPO / "infra" / "teardown.sh").read_text()
    assert "NOT deleted" in script and "sam delete" in script
    assert script.index("Delete the stack?") < script.index('"$SAM" delete')  # asks before deleting
    for bucket in ("InputBucket", "OutputBucket"):  # what the script promises
        assert template["Resources"][bucket]["DeletionPolicy"] == "Retain"
    makefile = (REPO / "Makefile").read_text()
    assert "teardown:" in makefile and "infra/teardown.sh" in makefile
