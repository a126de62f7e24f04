#!/bin/sh
# Creates the order-processing SQS queues (main queue + dead-letter queue).
#
# One script for both stacks:
#   * docker-compose mounts localstack-init/ready.d at /etc/localstack/init/ready.d
#     in the localstack/localstack container, which runs it once SQS is ready;
#   * scripts/stack.sh copies it into $FILESYSTEM_ROOT/etc/localstack/init/ready.d
#     for LocalStack in host mode, with the venv's `aws` on PATH.
# It can also be run by hand against any running LocalStack.
#
# Idempotent: CreateQueue with identical attributes returns the existing queue;
# if the queue exists with different attributes they are updated in place.
#
# Environment (all optional):
#   AWS_ENDPOINT_URL      default http://localhost:4566
#   AWS_DEFAULT_REGION    default us-east-1
#   AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY   default test / test
#   ORDER_QUEUE_NAME      default order-processing-queue
#   ORDER_DLQ_NAME        default order-processing-dlq
#   ORDER_QUEUE_VISIBILITY_TIMEOUT  default 30 (seconds)
#   ORDER_QUEUE_MAX_RECEIVE_COUNT   default 5
set -eu

AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}"
AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}"
AWS_PAGER=""
export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_PAGER

endpoint="${AWS_ENDPOINT_URL:-http://localhost:4566}"
region="${AWS_DEFAULT_REGION:-us-east-1}"
queue_name="${ORDER_QUEUE_NAME:-order-processing-queue}"
dlq_name="${ORDER_DLQ_NAME:-order-processing-dlq}"
visibility_timeout="${ORDER_QUEUE_VISIBILITY_TIMEOUT:-30}"
max_receive_count="${ORDER_QUEUE_MAX_RECEIVE_COUNT:-5}"

log() { printf '[create-queues] %s\n' "$*" >&2; }

if command -v aws >/dev/null 2>&1; then
    sqs() { aws --endpoint-url "$endpoint" --region "$region" --output text sqs "$@"; }
elif command -v awslocal >/dev/null 2>&1; then
    # awslocal picks the LocalStack endpoint itself.
    sqs() { awslocal --region "$region" --output text sqs "$@"; }
else
    log "neither 'aws' nor 'awslocal' found on PATH"
    exit 127
fi

# ensure_queue NAME ATTRIBUTES_JSON -> prints the queue URL
ensure_queue() {
    name=$1
    attributes=$2
    if out=$(sqs create-queue --queue-name "$name" --attributes "$attributes" \
        --query QueueUrl 2>&1); then
        printf '%s\n' "$out"
        return 0
    fi
    case $out in
        *QueueAlreadyExists* | *QueueNameExists*)
            log "queue $name exists with other attributes; updating them"
            url=$(sqs get-queue-url --queue-name "$name" --query QueueUrl)
            sqs set-queue-attributes --queue-url "$url" --attributes "$attributes" >/dev/null
            printf '%s\n' "$url"
            ;;
        *)
            log "create-queue $name failed: $out"
            return 1
            ;;
    esac
}

dlq_url=$(ensure_queue "$dlq_name" \
    "{\"VisibilityTimeout\":\"$visibility_timeout\"}")
dlq_arn=$(sqs get-queue-attributes --queue-url "$dlq_url" \
    --attribute-names QueueArn --query Attributes.QueueArn)
log "dead-letter queue: $dlq_url ($dlq_arn)"

# RedrivePolicy is itself a JSON document carried as a string attribute.
redrive_policy="{\\\"deadLetterTargetArn\\\":\\\"$dlq_arn\\\",\\\"maxReceiveCount\\\":\\\"$max_receive_count\\\"}"
queue_url=$(ensure_queue "$queue_name" \
    "{\"VisibilityTimeout\":\"$visibility_timeout\",\"RedrivePolicy\":\"$redrive_policy\"}")
log "queue: $queue_url (VisibilityTimeout=$visibility_timeout, maxReceiveCount=$max_receive_count -> $dlq_name)"
