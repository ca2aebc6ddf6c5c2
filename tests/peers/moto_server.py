"""A moto S3 server for the tests, on 127.0.0.1 with an OS-assigned port.

Prints one JSON line when ready: {"port": N, "access_key": ...,
"secret_key": ...}. With --auth every request must carry a valid SigV4
signature by that key; without, moto accepts any key. (moto 5.1's signature
check miscomputes requests with percent-encoded characters, such as `:` in a
key or `/` in a listing prefix, so only tests about credentials use it.)

With --ignore-conditions the server drops If-None-Match and If-Match from
every request before moto sees them, like S3-compatible servers that do not
implement conditional writes. With --ignore-if-match it drops only If-Match,
like servers that honour If-None-Match (so locks are safe) but have no
compare-and-swap.

Then reads commands from stdin, one per line:
  stop    close the listening socket (clients get "connection refused");
          the stored objects are kept
  start   listen again on the same port
  lists [BUCKET]  answer with the number of object listings (ListObjects
          and ListObjectsV2 requests) served so far (of BUCKET, when
          given), instead of "ok"
  gets KEY  answer with the number of GetObject requests served so far for
          objects whose key ends with KEY
  fill BUCKET FILE  store the objects FILE lists, one JSON object
          {"key", "body"} a line, straight into moto's backend (no HTTP), as
          a benchmark builds a large fleet; answers "ok"
  requests [BUCKET]  answer with every request served so far (to BUCKET,
          its objects and its listings, when given), as one JSON array of
          {"method", "path", "query", "query_string", "conditions"}: the
          query's parameter names, the query as sent, and the conditional
          headers sent (If-Match, If-None-Match,
          x-amz-copy-source-if-match), in order of arrival
  fault N HEADER STATUS CODE  answer the next N requests that carry
          HEADER (if-match, x-amz-acl, ...) with HTTP STATUS and the S3
          error CODE, before moto sees them: 503 SlowDown is S3 under
          load, 400 AccessControlListNotSupported a bucket that takes no
          ACLs
  lose N HEADER  pass the next N requests that carry HEADER to moto, then
          answer 500 InternalError instead of moto's answer: a change made
          whose answer was lost, which the SDKs send again
  hold N HEADER SECONDS  hold the next N requests that carry HEADER for
          SECONDS before moto sees them; requests are served one at a
          time, so the whole server is silent meanwhile, as a store that
          stops answering mid-change
Other commands are answered with one line, "ok". The server exits when stdin
closes, so it never outlives the test process that started it.

moto checks a conditional put (If-None-Match, If-Match) and then writes, in
two steps, while real S3 does both atomically. Requests are therefore
handled one at a time, which makes moto's conditions atomic as S3's are.
"""

import argparse
import json
import os
import sys
import threading
import time

from werkzeug.serving import WSGIRequestHandler, make_server

from moto.server import DomainDispatcherApplication, create_backend_app


def serialised(app):
    lock = threading.Lock()

    def handle(environ, start_response):
        with lock:
            return list(app(environ, start_response))

    return handle


def without_conditions(app, headers=("HTTP_IF_NONE_MATCH", "HTTP_IF_MATCH")):
    def handle(environ, start_response):
        for header in headers:
            environ.pop(header, None)
        return app(environ, start_response)

    return handle


FAULT = {"left": 0, "header": None, "status": 503, "code": "SlowDown"}
HOLD = {"left": 0, "header": None, "seconds": 0.0}
LOSE = {"left": 0, "header": None}
REASONS = {400: "Bad Request", 403: "Forbidden", 500: "Internal Server Error", 503: "Slow Down"}


def faulting(app):
    """Answers requests carrying FAULT's header with its status and error
    code while it counts any left."""

    def handle(environ, start_response):
        if HOLD["left"] > 0 and HOLD["header"] in environ:
            HOLD["left"] -= 1
            time.sleep(HOLD["seconds"])
        if LOSE["left"] > 0 and LOSE["header"] in environ:
            LOSE["left"] -= 1
            for _ in app(environ, lambda *args, **kwargs: None):
                pass
            body = (
                '<?xml version="1.0" encoding="UTF-8"?>\n'
                "<Error><Code>InternalError</Code><Message>Injected by the test.</Message></Error>"
            ).encode()
            start_response(
                "500 Internal Server Error",
                [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))],
            )
            return [body]
        if FAULT["left"] > 0 and FAULT["header"] in environ:
            FAULT["left"] -= 1
            environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            body = (
                '<?xml version="1.0" encoding="UTF-8"?>\n'
                f"<Error><Code>{FAULT['code']}</Code><Message>Injected by the test.</Message></Error>"
            ).encode()
            status = FAULT["status"]
            start_response(
                f"{status} {REASONS.get(status, 'Error')}",
                [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))],
            )
            return [body]
        return app(environ, start_response)

    return handle


LISTINGS = [0]
LISTINGS_BY_BUCKET = {}
OBJECT_GETS = {}
REQUESTS = []
CONDITIONS = ("HTTP_IF_MATCH", "HTTP_IF_NONE_MATCH", "HTTP_X_AMZ_COPY_SOURCE_IF_MATCH")


def counting_listings(app):
    def handle(environ, start_response):
        query = environ.get("QUERY_STRING", "")
        path = environ.get("PATH_INFO", "/").strip("/")
        REQUESTS.append(
            {
                "method": environ.get("REQUEST_METHOD"),
                "path": path,
                "query": sorted(f.split("=", 1)[0] for f in query.split("&") if f),
                "query_string": query,
                "conditions": [
                    h[len("HTTP_"):].replace("_", "-").lower() for h in CONDITIONS if h in environ
                ],
            }
        )
        if environ.get("REQUEST_METHOD") == "GET" and path and "/" not in path:
            fields = [f.split("=", 1)[0] for f in query.split("&") if f]
            if "list-type" in fields or "prefix" in fields or not fields:
                LISTINGS[0] += 1
                LISTINGS_BY_BUCKET[path] = LISTINGS_BY_BUCKET.get(path, 0) + 1
        elif environ.get("REQUEST_METHOD") == "GET" and "/" in path and (
            not query or "x-id=GetObject" in query
        ):
            OBJECT_GETS[path] = OBJECT_GETS.get(path, 0) + 1
        return app(environ, start_response)

    return handle


class NoDelayHandler(WSGIRequestHandler):
    # Headers and body go out in separate writes; without TCP_NODELAY the
    # client's delayed ACK holds answers back ~40 ms.
    disable_nagle_algorithm = True


class Listener:
    def __init__(self, app):
        self.app = app
        self.port = 0
        self.server = None
        self.thread = None

    def start(self):
        self.server = make_server(
            "127.0.0.1", self.port, self.app, threaded=True, request_handler=NoDelayHandler
        )
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def create_user(endpoint):
    """Creates an IAM user allowed everything and returns its key; must run
    while moto still accepts unsigned requests."""
    import boto3

    iam = boto3.client(
        "iam",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="bootstrap",
        aws_secret_access_key="bootstrap",
    )
    iam.create_user(UserName="stategate")
    iam.put_user_policy(
        UserName="stategate",
        PolicyName="all",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
            }
        ),
    )
    key = iam.create_access_key(UserName="stategate")["AccessKey"]
    iam.create_user(UserName="reader")
    allow_reader_writes(iam, False)
    reader = iam.create_access_key(UserName="reader")["AccessKey"]
    return (
        (key["AccessKeyId"], key["SecretAccessKey"]),
        (reader["AccessKeyId"], reader["SecretAccessKey"]),
    )


def allow_reader_writes(iam, writes):
    """The `reader` user may read and list; with `writes`, also write and
    delete, as credentials that lost or regained PutObject."""
    actions = ["s3:Get*", "s3:List*", "s3:Head*"]
    if writes:
        actions += ["s3:PutObject", "s3:DeleteObject"]
    iam.put_user_policy(
        UserName="reader",
        PolicyName="reader",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}],
            }
        ),
    )


def fill(bucket, path):
    """Stores the objects listed in `path` directly in moto's backend."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
    with open(path) as listing:
        for line in listing:
            item = json.loads(line)
            backend.put_object(bucket, item["key"], item["body"].encode())


def enable_auth():
    """From now on every request must be signed by a known key."""
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    ActionAuthenticatorMixin.request_count = 0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--auth", action="store_true", help="check SigV4 signatures")
    parser.add_argument(
        "--ignore-conditions",
        action="store_true",
        help="drop If-None-Match and If-Match from every request",
    )
    parser.add_argument(
        "--ignore-if-match",
        action="store_true",
        help="drop If-Match (only) from every request",
    )
    args = parser.parse_args()

    app = DomainDispatcherApplication(create_backend_app)
    if args.ignore_conditions:
        app = without_conditions(app)
    elif args.ignore_if_match:
        app = without_conditions(app, ("HTTP_IF_MATCH",))
    listener = Listener(serialised(counting_listings(faulting(app))))
    listener.start()
    endpoint = f"http://127.0.0.1:{listener.port}"
    ready = {"port": listener.port, "access_key": "test", "secret_key": "test"}
    iam = None
    if args.auth:
        (admin, reader) = create_user(endpoint)
        ready["access_key"], ready["secret_key"] = admin
        ready["reader_access_key"], ready["reader_secret_key"] = reader
        import boto3

        iam = boto3.client(
            "iam",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=admin[0],
            aws_secret_access_key=admin[1],
        )
        enable_auth()
    print(json.dumps(ready), flush=True)

    for line in sys.stdin:
        command = line.strip()
        if command == "stop":
            listener.stop()
        elif command == "start":
            listener.start()
        elif command in ("reader-writes on", "reader-writes off") and iam is not None:
            allow_reader_writes(iam, command.endswith("on"))
        elif command == "lists":
            print(LISTINGS[0], flush=True)
            continue
        elif command.startswith("lists "):
            print(LISTINGS_BY_BUCKET.get(command[len("lists "):], 0), flush=True)
            continue
        elif command.startswith("fault "):
            count, header, status, code = command.split(" ")[1:]
            FAULT["header"] = "HTTP_" + header.upper().replace("-", "_")
            FAULT["status"] = int(status)
            FAULT["code"] = code
            FAULT["left"] = int(count)
        elif command.startswith("lose "):
            _, count, header = command.split()
            LOSE["header"] = "HTTP_" + header.upper().replace("-", "_")
            LOSE["left"] = int(count)
        elif command.startswith("hold "):
            _, count, header, seconds = command.split()
            HOLD["header"] = "HTTP_" + header.upper().replace("-", "_")
            HOLD["seconds"] = float(seconds)
            HOLD["left"] = int(count)
        elif command.startswith("fill "):
            fill(*command.split(" ", 2)[1:])
        elif command == "requests" or command.startswith("requests "):
            bucket = command[len("requests "):]
            seen = [
                r for r in REQUESTS
                if not bucket or r["path"] == bucket or r["path"].startswith(bucket + "/")
            ]
            print(json.dumps(seen), flush=True)
            continue
        elif command.startswith("gets "):
            suffix = command[len("gets "):]
            print(sum(n for p, n in OBJECT_GETS.items() if p.endswith(suffix)), flush=True)
            continue
        else:
            print(f"unknown command {command!r}", flush=True)
            continue
        print("ok", flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
