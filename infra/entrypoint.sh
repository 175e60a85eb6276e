#!/bin/sh
# One image, two ways in. Lambda starts the container with the handler's name as the command
# (batch_job.handler.handler): hand over to the base image's Lambda runtime entry point. AWS Batch can
# replace the command but not the entry point, so a command that is a program on PATH (python ...) runs as is.
if [ "$#" -gt 0 ] && command -v "$1" >/dev/null 2>&1; then
  export PYTHONPATH="${LAMBDA_TASK_ROOT:-/var/task}${PYTHONPATH:+:$PYTHONPATH}"
  exec "$@"
fi
exec /lambda-entrypoint.sh "$@"
