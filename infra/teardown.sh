#!/usr/bin/env bash
# Delete the stack: its functions, queues, state machine, Batch resources, alarms and log groups.
#
# The input and output buckets are NOT deleted: they are kept (DeletionPolicy: Retain) with every image and
# every CSV in them, so a teardown never loses data. They go on costing S3 storage until you delete them
# yourself, after copying out what you need:
#   aws s3 rm s3://<bucket> --recursive && aws s3api delete-bucket --bucket <bucket>
# (the bucket names are printed below before the stack goes). The ECR repository SAM made for the image
# (resolve_image_repos) is deleted with its companion stack only by `sam delete`, which this script runs.
#
#   infra/teardown.sh [--stack-name NAME] [--region REGION]     asks before deleting
#   TEARDOWN_YES=1 infra/teardown.sh ...                        does not ask
source "$(dirname "$0")/sam_env.sh"

read -r input output < <("$VENV/bin/python" infra/stack_info.py buckets "$@")
echo "Deleting the stack. Its buckets stay, with their data: input $input, output $output."
if [[ "${TEARDOWN_YES:-}" != 1 ]]; then
  read -r -p "Delete the stack? [y/N] " answer
  [[ "$answer" == y || "$answer" == Y ]] || { echo "nothing deleted"; exit 1; }
fi
"$SAM" delete --no-prompts "$@"
echo "stack deleted; kept buckets: $input $output"
