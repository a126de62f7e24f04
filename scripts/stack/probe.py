"""Readiness probes for scripts/stack.sh (standard library only, except `mongo`).

Usage:
  probe.py mongo HOST PORT [--pid PID] [--timeout S]        (needs pymongo: run with the secantus venv)
  probe.py sqs HOST PORT [--pid PID] [--timeout S]
  probe.py sqs-init HOST PORT                               exit 0 if every ready.d hook succeeded
  probe.py sqs-queues HOST PORT NAME...                     exit 0 if every queue exists
  probe.py http URL [--pid PID] [--timeout S]               waits for a 200

Waiting probes retry until the service answers (exit 0), the timeout passes
(exit 1) or the process given with --pid exits (exit 2). The last error seen
is printed on stderr.
"""

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request

# Any credentials do; the Authorization header only carries region and account.
_SQS_AUTH = (
    "AWS4-HMAC-SHA256 Credential=test/20240101/us-east-1/sqs/aws4_request, "
    "SignedHeaders=content-type;host;x-amz-target, Signature=0"
)


def process_alive(pid):
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_until(check, pid, timeout, what):
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while True:
        try:
            result = check()
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            result, last = False, f"{type(exc).__name__}: {exc}"
        else:
            if result is True:
                return 0
            if isinstance(result, str):
                last = result
        if pid and not process_alive(pid):
            print(f"{what}: process {pid} exited ({last})", file=sys.stderr)
            return 2
        if time.monotonic() >= deadline:
            print(f"{what}: no answer within {timeout:g}s ({last})", file=sys.stderr)
            return 1
        time.sleep(0.25)


def http(method, url, body=None, headers=None, timeout=5.0):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def sqs_call(host, port, action, payload):
    return http(
        "POST",
        f"http://{host}:{port}/",
        body=json.dumps(payload).encode(),
        headers={
            "Content-Type": "application/x-amz-json-1.0",
            "X-Amz-Target": f"AmazonSQS.{action}",
            "Authorization": _SQS_AUTH,
        },
        timeout=10.0,
    )


def probe_mongo(args):
    import pymongo  # only in the secantus venv

    def check():
        client = pymongo.MongoClient(
            args.host,
            args.port,
            directConnection=True,
            serverSelectionTimeoutMS=1000,
            connectTimeoutMS=1000,
        )
        try:
            client.admin.command("ping")
            hello = client.admin.command("hello")
        finally:
            client.close()
        if not hello.get("isWritablePrimary", hello.get("ismaster")):
            return f"hello answered but not writable primary: {hello}"
        return True

    return wait_until(check, args.pid, args.timeout, f"mongo {args.host}:{args.port}")


def probe_sqs(args):
    def check():
        status, body = http("GET", f"http://{args.host}:{args.port}/_localstack/init/ready")
        if status != 200:
            return f"/_localstack/init/ready answered {status}"
        if json.loads(body).get("completed") is not True:
            return "init hooks not completed yet"
        status, body = sqs_call(args.host, args.port, "ListQueues", {})
        if status != 200:
            return f"ListQueues answered {status}: {body[:200]!r}"
        return True

    return wait_until(check, args.pid, args.timeout, f"sqs {args.host}:{args.port}")


def probe_sqs_init(args):
    status, body = http("GET", f"http://{args.host}:{args.port}/_localstack/init")
    if status != 200:
        print(f"/_localstack/init answered {status}", file=sys.stderr)
        return 1
    scripts = [s for s in json.loads(body).get("scripts", []) if s.get("stage") == "READY"]
    bad = [s for s in scripts if s.get("state") != "SUCCESSFUL"]
    for s in scripts:
        print(f"  hook {os.path.basename(s.get('name', '?'))}: {s.get('state')}", file=sys.stderr)
    return 1 if bad or not scripts else 0


def probe_sqs_queues(args):
    missing = []
    for name in args.names:
        status, body = sqs_call(args.host, args.port, "GetQueueUrl", {"QueueName": name})
        if status != 200:
            missing.append(name)
    if missing:
        print(f"missing queues: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


def probe_http(args):
    def check():
        status, _ = http("GET", args.url, timeout=3.0)
        return True if status == 200 else f"{args.url} answered {status}"

    return wait_until(check, args.pid, args.timeout, args.url)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)

    def waiting(p):
        p.add_argument("--pid", type=int, default=0)
        p.add_argument("--timeout", type=float, default=0.0)

    for name, fn in (("mongo", probe_mongo), ("sqs", probe_sqs)):
        p = sub.add_parser(name)
        p.add_argument("host")
        p.add_argument("port", type=int)
        waiting(p)
        p.set_defaults(fn=fn)
    p = sub.add_parser("sqs-init")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.set_defaults(fn=probe_sqs_init)
    p = sub.add_parser("sqs-queues")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("names", nargs="+")
    p.set_defaults(fn=probe_sqs_queues)
    p = sub.add_parser("http")
    p.add_argument("url")
    waiting(p)
    p.set_defaults(fn=probe_http)

    args = parser.parse_args()
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
