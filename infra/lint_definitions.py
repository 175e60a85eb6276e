"""Write a plain CloudFormation template holding each AWS::Serverless::StateMachine's definition file, so that
cfn-lint checks the definition itself (rule E3601: states, fields, types). cfn-lint checks SAM resources
against SAM's schema only, and neither it nor `sam validate` opens a DefinitionUri file. Used by
infra/validate.sh (runs with the deploy virtualenv's Python, which has cfn-lint).

    python infra/lint_definitions.py template.yaml > /tmp/definitions.json && cfn-lint /tmp/definitions.json
"""
import json
import sys
from pathlib import Path

from cfnlint.decode import decode


def definitions_template(path: Path) -> dict:
    template, errors = decode(str(path))
    if errors:
        sys.exit(f"error: cannot read {path}: {errors[0]}")
    resources = {}
    for name, resource in template.get("Resources", {}).items():
        properties = resource.get("Properties", {})
        uri = properties.get("DefinitionUri")
        if resource.get("Type") != "AWS::Serverless::StateMachine" or not isinstance(uri, str):
            continue
        resources[name] = {"Type": "AWS::StepFunctions::StateMachine", "Properties": {
            "RoleArn": "arn:aws:iam::123456789012:role/lint-only",
            # only the names matter: they tell cfn-lint which ${...} are filled in at deploy time
            "DefinitionSubstitutions": {key: "x" for key in properties.get("DefinitionSubstitutions", {})},
            "Definition": json.loads((path.parent / uri).read_text()),
        }}
    if not resources:
        sys.exit(f"error: no AWS::Serverless::StateMachine with a DefinitionUri file in {path}")
    return {"AWSTemplateFormatVersion": "2010-09-09", "Resources": resources}


if __name__ == "__main__":
    json.dump(definitions_template(Path(sys.argv[1])), sys.stdout, indent=1)
