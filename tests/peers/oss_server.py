#!/usr/bin/env python3
"""A small Alibaba Cloud OSS protocol server for stategate's tests.

No OSS emulator exists in the package registries, so the test suite runs this
one on 127.0.0.1. It answers the requests stategate's OSS store sends (through
the ``ali-oss-rs`` crate) with OSS's own wire behaviour, so a test that passes
here exercises the same requests and error codes as real OSS;
``test_oss_server.py`` proves it against Alibaba's official V4 SDK:

* Addressing: virtual-hosted (``Host: <bucket>.<endpoint>``), also as
  absolute-form proxy requests (``GET http://bucket.endpoint/key HTTP/1.1``:
  point a client's ``HTTP_PROXY`` here and use an ``http://`` endpoint, no
  DNS change needed).
* Objects: PutObject, GetObject, HeadObject, DeleteObject.
  ``x-oss-forbid-overwrite: true`` refuses to replace an object with 409
  ``FileAlreadyExists``, and is ignored on buckets whose versioning is
  Enabled or Suspended, as on real OSS. ``x-oss-server-side-encryption`` and
  ``x-oss-object-acl`` are checked and stored, the encryption is returned.
  ``Content-MD5`` is verified (400 ``InvalidDigest``). ``If-Match`` on GET
  and HEAD answers 412 ``PreconditionFailed`` when it does not hold.
* Buckets: ListObjectsV2 (``list-type=2``) with ``prefix``, ``max-keys``,
  ``start-after`` and ``continuation-token`` (``encoding-type`` is accepted and keys are sent
  unencoded); GetBucketVersioning (``?versioning``). Versioned buckets
  return ``x-oss-version-id`` and delete markers, but keep only the current
  version of each object.
* Auth: signature V4 ``OSS4-HMAC-SHA256`` in the Authorization header
  (without ``AdditionalHeaders``), verified against the configured secrets:
  an unknown key id gets 403 ``InvalidAccessKeyId``, a wrong secret 403
  ``SignatureDoesNotMatch``, a clock more than 15 minutes off 403
  ``RequestTimeTooSkewed``. Credentials configured with a security token
  (STS) require the matching ``x-oss-security-token`` header (missing:
  ``InvalidAccessKeyId``; wrong: ``InvalidSecurityToken``). Requests without
  an Authorization header are anonymous and refused (buckets are private).
* Errors: OSS error XML bodies (Code, Message, RequestId, HostId, EC), none
  on HEAD, and an ``x-oss-request-id`` on every response.

Anything else stategate does not send is answered 400 ``NotImplemented``
(other sub-resources, query parameters on objects, ListObjects v1,
``delimiter``) or 400 ``InvalidArgument`` (other
Authorization schemes, such as signature V1), never quietly misread:
path-style addressing, presigned URLs, ACL and metadata sub-resources,
PutBucketVersioning, conditional PutObject, multipart, copy. Request bodies
must come with a Content-Length.

Test-only control endpoints, unauthenticated, path-style under ``/-/`` (not a
valid bucket name, so they cannot clash with a bucket):

* ``POST /-/buckets?name=NAME[&versioning=Enabled|Suspended]`` creates a bucket.
* ``PUT /-/buckets?name=NAME&versioning=Enabled|Suspended`` sets an
  existing bucket's versioning, as an operator's PutBucketVersioning would
  while servers keep running (as on OSS, it never returns to unversioned).
* ``POST /-/redirect?bucket=NAME&key=KEY&to=URL`` answers the next request
  for that object ``307 Temporary Redirect`` to URL, as a bucket's
  redirect or back-to-origin rules can, for tests that a client does not
  follow it.
* ``POST /-/unanswered?bucket=NAME&prefix=P`` makes the next PUT of an
  object whose name starts with P, then closes the connection without an
  answer, as a lost answer (a reset, a proxy's timeout) looks to a client.
* ``POST /-/late?bucket=NAME&prefix=P&method=M&seconds=S`` holds the next
  request with method M (``PUT`` or ``DELETE``) for an object whose name
  starts with P for S seconds, then makes it and answers, as a request
  delayed on its way looks to a client that gave up waiting: it lands
  after its failure was reported.
* ``DELETE /-/buckets?name=NAME`` deletes a bucket with its objects, as an
  operator would while servers keep running (requests for it then get
  ``NoSuchBucket``; HEAD, as on OSS, a 404 without a body).
* ``PUT /-/objects?bucket=NAME&key=KEY`` stores the body as another client's
  plain write would.
* ``GET /-/requests?bucket=NAME`` answers every request made to that bucket
  so far, in order, as JSON ``{"method", "bucket", "key", "query", "prefix"}``
  (the query's parameter names, and the ``prefix`` of a listing), for tests
  that count requests.
* ``GET /-/objects?bucket=NAME`` lists every object as JSON with its size,
  ETag, ACL, server-side encryption, content type and version id; with
  ``&key=KEY`` it answers that object's stored bytes.

Usage::

    oss_server.py [--port 0] [--endpoint oss-cn-beijing.aliyuncs.com]
                  [--region cn-beijing] --credential AK:SECRET[:STS_TOKEN] ...

The first line on stdout is ``listening on 127.0.0.1:PORT``. The server exits
when its standard input closes, so it never outlives the test that started it.
"""

import argparse
import base64
import datetime
import email.utils
import hashlib
import hmac
import json
import os
import secrets
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from xml.sax.saxutils import escape

ACLS = ("private", "public-read", "public-read-write", "default")
SSE_ALGORITHMS = ("AES256", "KMS", "SM4")
# Largest allowed clock difference for signed requests, as on OSS.
MAX_SKEW_SECONDS = 15 * 60
# The ListObjectsV2 parameters served; any other is refused.
LIST_PARAMS = frozenset(
    ("list-type", "prefix", "max-keys", "start-after", "continuation-token", "encoding-type")
)


class OssError(Exception):
    """An error answered as OSS does: status, code, message, EC."""

    def __init__(self, status, code, message, ec="0000-00000000", **extra):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.ec = ec
        self.extra = extra


def not_implemented(what):
    return OssError(400, "NotImplemented", "%s is not implemented here." % what)


class Object:
    """One stored object (only its current version)."""

    def __init__(self, body, content_type, acl, sse, version_id):
        self.body = body
        self.etag = '"%s"' % hashlib.md5(body).hexdigest().upper()
        self.content_type = content_type
        self.acl = acl
        self.sse = sse
        self.version_id = version_id
        self.modified = time.time()


class Bucket:
    def __init__(self, name, versioning=None):
        self.name = name
        # None (never enabled), "Enabled" or "Suspended".
        self.versioning = versioning
        self.objects = {}


class Store:
    """All buckets; one lock makes every check-and-write atomic."""

    def __init__(self):
        self.lock = threading.Lock()
        self.buckets = {}
        # Every request to a bucket, in order: GET /-/requests shows them.
        self.requests = []
        # (bucket, key) -> where the next request for that object is sent.
        self.redirects = {}
        # (bucket, key prefix): the next PUT under it is made, unanswered.
        self.unanswered = []
        # (bucket, key prefix, method, seconds): the next such request is
        # held that long, then made.
        self.late = []

    def bucket(self, name):
        bucket = self.buckets.get(name)
        if bucket is None:
            raise OssError(
                404, "NoSuchBucket", "The specified bucket does not exist.", "0015-00000101",
                BucketName=name,
            )
        return bucket


def uri_encode(text, safe=""):
    """RFC 3986 encoding as OSS's V4 canonical form uses it."""
    return urllib.parse.quote(text, safe=safe + "-_.~")


def hmac_sha256(key, msg):
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()


def parse_query(raw):
    """Query parameters in order, decoded; a key without `=` has value ''."""
    pairs = []
    for part in raw.split("&") if raw else []:
        if not part:
            continue
        key, _, value = part.partition("=")
        pairs.append((urllib.parse.unquote(key), urllib.parse.unquote(value)))
    return pairs


def http_date(ts):
    return email.utils.formatdate(ts, usegmt=True)


def iso_date(ts):
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.000Z"
    )


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; without TCP_NODELAY the
    # client's delayed ACK holds every answer back ~40 ms.
    disable_nagle_algorithm = True
    server_version = "AliyunOSS"
    sys_version = ""

    # ---- plumbing -------------------------------------------------------

    def log_message(self, fmt, *args):
        if self.server.verbose:
            sys.stderr.write("oss_server: " + (fmt % args) + "\n")

    def do_GET(self):
        self.dispatch()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

    def reply(self, status, body=b"", headers=None, content_type="application/xml"):
        self.send_response(status)
        self.send_header("x-oss-request-id", self.request_id)
        self.send_header("Date", http_date(time.time()))
        if body or content_type != "application/xml":
            self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def reply_error(self, err):
        headers = {"x-oss-ec": err.ec}
        if self.command == "HEAD":
            # OSS answers HEAD errors without a body.
            self.reply(err.status, b"", headers)
            return
        extra = "".join(
            "  <%s>%s</%s>\n" % (k, escape(str(v)), k) for k, v in err.extra.items()
        )
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Error>\n'
            "  <Code>%s</Code>\n  <Message>%s</Message>\n  <RequestId>%s</RequestId>\n"
            "  <HostId>%s</HostId>\n%s  <EC>%s</EC>\n"
            "  <RecommendDoc>https://api.aliyun.com/troubleshoot?q=%s</RecommendDoc>\n</Error>\n"
            % (err.code, escape(err.message), self.request_id, escape(self.host_id),
               extra, err.ec, err.ec)
        ).encode()
        self.reply(err.status, body, headers)

    def dispatch(self):
        self.request_id = secrets.token_hex(12).upper()
        self.host_id = self.server.endpoint
        try:
            target = self.path
            if target.startswith("http://"):
                # Absolute form: we are the client's HTTP proxy.
                parts = urllib.parse.urlsplit(target)
                host, raw_path, raw_query = parts.netloc, parts.path or "/", parts.query
            else:
                host = self.headers.get("Host", "")
                raw_path, _, raw_query = target.partition("?")
            length = int(self.headers.get("Content-Length") or 0)
            self.body = self.rfile.read(length) if length else b""
            if raw_path.startswith("/-/"):
                return self.control(raw_path, dict(parse_query(raw_query)))
            self.host_id = host.split(":")[0]
            bucket_name = self.bucket_name(self.host_id)
            key = urllib.parse.unquote(raw_path)[1:]
            self.query = parse_query(raw_query)
            self.params = dict(self.query)
            with self.server.store.lock:
                self.server.store.requests.append(
                    {"method": self.command, "bucket": bucket_name, "key": key,
                     "query": sorted(self.params), "prefix": self.params.get("prefix")}
                )
            self.authenticate(bucket_name, key)
            with self.server.store.lock:
                location = self.server.store.redirects.pop((bucket_name, key), None)
            if location is not None:
                return self.reply(307, b"", {"Location": location})
            with self.server.store.lock:
                late = next((l for l in self.server.store.late if l[2] == self.command
                             and l[0] == bucket_name and key.startswith(l[1])), None)
                if late is not None:
                    self.server.store.late.remove(late)
            if late is not None:
                time.sleep(late[3])
            with self.server.store.lock:
                store = self.server.store
                lost = next((u for u in store.unanswered if self.command == "PUT"
                             and u[0] == bucket_name and key.startswith(u[1])), None)
                if lost is not None:
                    store.unanswered.remove(lost)
                    # Made, then the connection closes before the answer.
                    self.reply = lambda *args, **kwargs: None
                    self.close_connection = True
                self.route(store.bucket(bucket_name), key)
        except OssError as err:
            self.reply_error(err)
        except (ConnectionError, BrokenPipeError):
            pass

    def bucket_name(self, host):
        """The bucket a virtual-hosted Host names."""
        suffix = "." + self.server.endpoint
        if not host.endswith(suffix):
            raise not_implemented("Addressing other than <bucket>.%s" % self.server.endpoint)
        return host[: -len(suffix)]

    # ---- authentication -------------------------------------------------

    def authenticate(self, bucket, key):
        auth = self.headers.get("Authorization", "")
        if auth.startswith("OSS4-HMAC-SHA256 "):
            fields = {}
            for part in auth[len("OSS4-HMAC-SHA256 "):].split(","):
                name, _, value = part.strip().partition("=")
                fields[name] = value
            self.check_v4(bucket, key, fields.get("Credential", ""), fields.get("Signature", ""))
        elif auth:
            raise OssError(400, "InvalidArgument", "Authorization header is invalid.", "0002-00000016")
        else:
            raise OssError(403, "AccessDenied",
                           "You have no right to access this object because of bucket acl.",
                           "0003-00000001")

    def credential(self, ak):
        cred = self.server.credentials.get(ak)
        if cred is None:
            raise OssError(403, "InvalidAccessKeyId",
                           "The OSS Access Key Id you provided does not exist in our records.",
                           "0002-00000002", OSSAccessKeyId=ak)
        secret, token = cred
        sent = self.headers.get("x-oss-security-token")
        if token and not sent:
            raise OssError(403, "InvalidAccessKeyId",
                           "The OSS Access Key Id you provided does not exist in our records.",
                           "0002-00000003", OSSAccessKeyId=ak)
        if token and sent != token:
            raise OssError(403, "InvalidSecurityToken",
                           "The security token you provided is invalid.", "0002-00000008")
        return secret

    def check_v4(self, bucket, key, credential, signature):
        parts = credential.split("/")
        if len(parts) != 5 or parts[3] != "oss" or parts[4] != "aliyun_v4_request":
            raise OssError(400, "InvalidArgument", "Invalid credential in Authorization header.",
                           "0002-00000227")
        ak, day, region = parts[0], parts[1], parts[2]
        if region != self.server.region:
            raise OssError(400, "InvalidArgument", "Invalid signing region in Authorization header.",
                           "0002-00000229")
        date = self.headers.get("x-oss-date", "")
        try:
            signed_at = datetime.datetime.strptime(date, "%Y%m%dT%H%M%SZ").replace(
                tzinfo=datetime.timezone.utc).timestamp()
        except ValueError:
            raise OssError(403, "AccessDenied", "x-oss-date is invalid.", "0002-00000018")
        if day != date[:8]:
            raise OssError(400, "InvalidArgument", "Invalid signing date in Authorization header.",
                           "0002-00000228")
        if abs(signed_at - time.time()) > MAX_SKEW_SECONDS:
            raise OssError(403, "RequestTimeTooSkewed",
                           "The difference between the request time and the current time is too large.",
                           "0002-00000504")
        secret = self.credential(ak)
        headers = sorted(
            (k.lower(), v.strip()) for k, v in self.headers.items()
            if k.lower().startswith("x-oss-") or k.lower() in ("content-type", "content-md5")
        )
        pairs = sorted((uri_encode(k), uri_encode(v)) for k, v in self.query)
        canonical_request = "\n".join([
            self.command,
            uri_encode("/%s/%s" % (bucket, key), safe="/"),
            "&".join(k + "=" + v if v else k for k, v in pairs),
            "".join("%s:%s\n" % kv for kv in headers),
            "",  # AdditionalHeaders
            self.headers.get("x-oss-content-sha256", "UNSIGNED-PAYLOAD"),
        ])
        string_to_sign = "\n".join([
            "OSS4-HMAC-SHA256", date, "/".join(parts[1:]),
            hashlib.sha256(canonical_request.encode("utf-8")).hexdigest(),
        ])
        signing_key = ("aliyun_v4" + secret).encode()
        for step in (day, region, "oss", "aliyun_v4_request"):
            signing_key = hmac_sha256(signing_key, step)
        expected = hmac.new(signing_key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature):
            raise OssError(403, "SignatureDoesNotMatch",
                           "The request signature we calculated does not match the signature you provided. "
                           "Check your key and signing method.", "0002-00000040",
                           OSSAccessKeyId=ak, StringToSign=string_to_sign,
                           CanonicalRequest=canonical_request)

    # ---- operations -----------------------------------------------------

    def route(self, bucket, key):
        p, method = self.params, self.command
        if not key:
            if method == "GET" and "versioning" in p:
                return self.get_versioning(bucket)
            if method == "GET" and p.get("list-type") == "2" and LIST_PARAMS.issuperset(p):
                return self.list_objects(bucket)
            raise not_implemented("This bucket operation")
        if p:
            raise not_implemented("An object sub-resource or query parameter")
        if method == "PUT":
            return self.put_object(bucket, key)
        if method in ("GET", "HEAD"):
            return self.read_object(bucket, key)
        if method == "DELETE":
            return self.delete_object(bucket, key)
        raise OssError(405, "MethodNotAllowed", "The specified method is not allowed against this resource.",
                       "0000-00000000")

    def put_object(self, bucket, key):
        h = self.headers
        md5 = h.get("Content-MD5")
        if md5 is not None:
            try:
                digest = base64.b64decode(md5, validate=True)
            except ValueError:
                digest = b""
            if len(digest) != 16 or digest != hashlib.md5(self.body).digest():
                raise OssError(400, "InvalidDigest", "The Content-MD5 you specified is not valid.",
                               "0016-00000117")
        acl = h.get("x-oss-object-acl", "default")
        if acl not in ACLS:
            raise OssError(400, "InvalidArgument", "no such object access control exists",
                           "0016-00000502", ArgumentName="x-oss-object-acl", ArgumentValue=acl)
        sse = h.get("x-oss-server-side-encryption")
        if sse is not None and sse not in SSE_ALGORITHMS:
            raise OssError(400, "InvalidEncryptionAlgorithmError",
                           "The Encryption request you specified is not valid. Supported value: AES256/KMS/SM4",
                           "0016-00000218")
        forbid = h.get("x-oss-forbid-overwrite", "").lower() == "true"
        # OSS ignores x-oss-forbid-overwrite on buckets with versioning
        # Enabled or Suspended.
        if forbid and bucket.versioning is None and key in bucket.objects:
            raise OssError(409, "FileAlreadyExists", "The object you specified already exists and can not be overwritten.",
                           "0016-00000721", Key=key)
        version_id = secrets.token_hex(16) if bucket.versioning == "Enabled" else (
            "null" if bucket.versioning == "Suspended" else None)
        obj = Object(self.body, h.get("Content-Type") or "application/octet-stream", acl, sse, version_id)
        bucket.objects[key] = obj
        headers = {"ETag": obj.etag,
                   "Content-MD5": base64.b64encode(hashlib.md5(self.body).digest()).decode()}
        if sse:
            headers["x-oss-server-side-encryption"] = sse
        if version_id:
            headers["x-oss-version-id"] = version_id
        self.reply(200, b"", headers)

    def read_object(self, bucket, key):
        obj = bucket.objects.get(key)
        if obj is None:
            raise OssError(404, "NoSuchKey", "The specified key does not exist.", "0026-00000001",
                           Key=key)
        if_match = self.headers.get("If-Match")
        if if_match is not None and if_match.strip() not in (obj.etag, obj.etag.strip('"'), "*"):
            raise OssError(412, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold.",
                           "0026-00000004", Condition="If-Match")
        headers = {
            "ETag": obj.etag,
            "Last-Modified": http_date(obj.modified),
            "Content-Length": str(len(obj.body)),
            "x-oss-object-type": "Normal",
            "x-oss-storage-class": "Standard",
            "Accept-Ranges": "bytes",
        }
        if obj.sse:
            headers["x-oss-server-side-encryption"] = obj.sse
        if obj.version_id:
            headers["x-oss-version-id"] = obj.version_id
        self.reply(200, obj.body, headers, content_type=obj.content_type)

    def delete_object(self, bucket, key):
        existed = bucket.objects.pop(key, None) is not None
        headers = {}
        if bucket.versioning and existed:
            headers["x-oss-delete-marker"] = "true"
            headers["x-oss-version-id"] = secrets.token_hex(16)
        self.reply(204, b"", headers)

    def get_versioning(self, bucket):
        status = "<Status>%s</Status>" % bucket.versioning if bucket.versioning else ""
        body = ('<?xml version="1.0" encoding="UTF-8"?>\n<VersioningConfiguration>%s'
                "</VersioningConfiguration>\n" % status).encode()
        self.reply(200, body)

    def list_objects(self, bucket):
        p = self.params
        prefix = p.get("prefix", "")
        try:
            max_keys = int(p.get("max-keys", "100"))
        except ValueError:
            max_keys = -1
        if not 0 < max_keys <= 1000:
            raise OssError(400, "InvalidArgument", "Argument max-keys must be between 1 and 1000.",
                           "0017-00000101", ArgumentName="max-keys")
        token = p.get("continuation-token", "")
        # As on OSS, the continuation token wins over start-after.
        start = base64.urlsafe_b64decode(token.encode()).decode() if token else p.get("start-after", "")
        keys = sorted(k for k in bucket.objects if k.startswith(prefix) and k > start)
        truncated = len(keys) > max_keys
        keys = keys[:max_keys]
        out = ['<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult>',
               "<Name>%s</Name>" % escape(bucket.name),
               "<Prefix>%s</Prefix>" % escape(prefix),
               "<MaxKeys>%d</MaxKeys>" % max_keys,
               *(["<StartAfter>%s</StartAfter>" % escape(p["start-after"])] if "start-after" in p else []),
               "<IsTruncated>%s</IsTruncated>" % ("true" if truncated else "false")]
        if token:
            out.append("<ContinuationToken>%s</ContinuationToken>" % escape(token))
        if truncated:
            out.append("<NextContinuationToken>%s</NextContinuationToken>"
                       % base64.urlsafe_b64encode(keys[-1].encode()).decode())
        out.append("<KeyCount>%d</KeyCount>" % len(keys))
        for k in keys:
            obj = bucket.objects[k]
            out.append(
                "<Contents><Key>%s</Key><LastModified>%s</LastModified><ETag>%s</ETag>"
                "<Type>Normal</Type><Size>%d</Size><StorageClass>Standard</StorageClass>"
                "<Owner><ID>0022012****</ID><DisplayName>0022012****</DisplayName></Owner></Contents>"
                % (escape(k), iso_date(obj.modified), escape(obj.etag), len(obj.body))
            )
        out.append("</ListBucketResult>\n")
        self.reply(200, "\n".join(out).encode())

    # ---- test control ---------------------------------------------------

    def control(self, path, params):
        store = self.server.store
        with store.lock:
            if path == "/-/buckets" and self.command == "POST":
                name = params.get("name", "")
                versioning = params.get("versioning") or None
                if not name or versioning not in (None, "Enabled", "Suspended"):
                    raise OssError(400, "InvalidArgument", "name and versioning=Enabled|Suspended",
                                   "0000-00000000")
                store.buckets.setdefault(name, Bucket(name, versioning))
                return self.reply(200, b"{}", content_type="application/json")
            if path == "/-/buckets" and self.command == "PUT":
                bucket = store.bucket(params.get("name", ""))
                if params.get("versioning") not in ("Enabled", "Suspended"):
                    raise OssError(400, "InvalidArgument", "versioning=Enabled|Suspended",
                                   "0000-00000000")
                bucket.versioning = params["versioning"]
                return self.reply(200, b"{}", content_type="application/json")
            if path == "/-/unanswered" and self.command == "POST":
                store.unanswered.append((params.get("bucket", ""), params.get("prefix", "")))
                return self.reply(200, b"{}", content_type="application/json")
            if path == "/-/late" and self.command == "POST":
                store.late.append((params.get("bucket", ""), params.get("prefix", ""),
                                   params.get("method", ""), float(params.get("seconds", "0"))))
                return self.reply(200, b"{}", content_type="application/json")
            if path == "/-/redirect" and self.command == "POST":
                store.redirects[(params.get("bucket", ""), params.get("key", ""))] = params["to"]
                return self.reply(200, b"{}", content_type="application/json")
            if path == "/-/buckets" and self.command == "DELETE":
                store.bucket(params.get("name", ""))
                del store.buckets[params["name"]]
                return self.reply(200, b"{}", content_type="application/json")
            if path == "/-/objects" and self.command == "PUT":
                # Another client's plain write, unsigned: the tests use it to
                # change a state behind stategate's back.
                bucket = store.bucket(params.get("bucket", ""))
                bucket.objects[params.get("key", "")] = Object(
                    self.body, "application/octet-stream", "default", None, None)
                return self.reply(200, b"{}", content_type="application/json")
            if path == "/-/objects" and self.command == "GET" and "key" in params:
                # Another client's plain read of one object's stored bytes.
                bucket = store.bucket(params.get("bucket", ""))
                obj = bucket.objects.get(params["key"])
                if obj is None:
                    return self.reply(404, b"", content_type="application/octet-stream")
                return self.reply(200, obj.body, content_type="application/octet-stream")
            if path == "/-/requests" and self.command == "GET":
                bucket = params.get("bucket", "")
                seen = [r for r in store.requests if r["bucket"] == bucket]
                return self.reply(200, json.dumps(seen).encode(), content_type="application/json")
            if path == "/-/objects" and self.command == "GET":
                bucket = store.bucket(params.get("bucket", ""))
                listing = [
                    {"key": k, "size": len(o.body), "etag": o.etag, "acl": o.acl,
                     "sse": o.sse, "content_type": o.content_type, "version_id": o.version_id}
                    for k, o in sorted(bucket.objects.items())
                ]
                return self.reply(200, json.dumps(listing).encode(), content_type="application/json")
        raise OssError(404, "NotFound", "no such control endpoint", "0000-00000000")


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port, endpoint, region, credentials, verbose):
        super().__init__(("127.0.0.1", port), Handler)
        self.endpoint = endpoint
        self.region = region
        self.credentials = credentials
        self.verbose = verbose
        self.store = Store()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="0 = any free port")
    parser.add_argument("--endpoint", default="oss-cn-beijing.aliyuncs.com",
                        help="endpoint whose subdomains are buckets")
    parser.add_argument("--region", default="cn-beijing", help="region V4 signatures must name")
    parser.add_argument("--credential", action="append", default=[], metavar="AK:SECRET[:TOKEN]")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)

    credentials = {}
    for spec in args.credential:
        parts = spec.split(":", 2)
        if len(parts) < 2:
            parser.error("--credential wants AK:SECRET[:TOKEN]")
        credentials[parts[0]] = (parts[1], parts[2] if len(parts) == 3 else None)

    server = Server(args.port, args.endpoint, args.region, credentials, args.verbose)
    host, port = server.server_address[:2]
    print("listening on %s:%d" % (host, port), flush=True)

    def watch_stdin():
        try:
            while sys.stdin.buffer.read(4096):
                pass
        finally:
            os._exit(0)

    threading.Thread(target=watch_stdin, daemon=True).start()
    server.serve_forever()


if __name__ == "__main__":
    main()
