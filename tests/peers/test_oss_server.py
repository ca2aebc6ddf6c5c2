"""Proves oss_server.py faithful to OSS by driving it with Alibaba's official
V4 Python SDK (alibabacloud-oss-v2), not with stategate's client.

Every request is virtual-hosted and V4-signed in the Authorization header, and
reaches the server as its HTTP proxy, as stategate's do. If the SDK and the
server disagree on a signature, an error code or a header, these tests fail,
so the server cannot drift into accepting only what our Rust client happens
to send.

Run: .venv/bin/python -m pytest tests/peers/test_oss_server.py
"""

import base64
import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest

try:
    import alibabacloud_oss_v2 as oss
except ImportError as e:  # fail, never skip: the test needs the real SDK
    raise ImportError(
        "%s: run `python3 -m venv .venv && .venv/bin/pip install -r tests/peers/requirements.txt`" % e
    ) from e

HERE = os.path.dirname(os.path.abspath(__file__))
ENDPOINT = "oss-cn-beijing.aliyuncs.com"
REGION = "cn-beijing"
AK, SECRET = "LTAItestkey", "test-secret-123"
STS_AK, STS_SECRET, STS_TOKEN = "STS.testkey", "sts-secret", "CAIS-token+/=abc"


def control(server, method, path):
    """Calls a test-only control endpoint; answers the parsed JSON."""
    req = urllib.request.Request(server + path, method=method)
    with urllib.request.urlopen(req) as resp:
        assert resp.status == 200
        return json.loads(resp.read())


def new_bucket(server, versioning=""):
    name = "b-%s" % uuid.uuid4().hex[:12]
    control(server, "POST", "/-/buckets?name=%s&versioning=%s" % (name, versioning))
    return name


@pytest.fixture(scope="module")
def server():
    proc = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "oss_server.py"),
         "--endpoint", ENDPOINT, "--region", REGION,
         "--credential", "%s:%s" % (AK, SECRET),
         "--credential", "%s:%s:%s" % (STS_AK, STS_SECRET, STS_TOKEN)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    line = proc.stdout.readline()
    assert line.startswith("listening on "), line
    yield "http://" + line.split()[-1]
    proc.stdin.close()
    proc.wait(timeout=10)


@pytest.fixture
def bucket(server):
    return new_bucket(server)


def client(server, ak=AK, secret=SECRET, token=None, anonymous=False):
    cfg = oss.config.load_default()
    cfg.credentials_provider = (oss.credentials.AnonymousCredentialsProvider() if anonymous
                                else oss.credentials.StaticCredentialsProvider(ak, secret, token))
    cfg.region = REGION
    cfg.retry_max_attempts = 1
    cfg.endpoint = "http://" + ENDPOINT
    # The SDK's string form maps to requests keys that never match; the
    # dict form is passed through.
    cfg.proxy_host = {"http": server}
    return oss.Client(cfg)


def key():
    return "t/%s.json" % uuid.uuid4()


def service_error(call):
    """The ServiceError the SDK raises for `call`."""
    with pytest.raises(oss.exceptions.OperationError) as err:
        call()
    se = err.value.unwrap()
    assert isinstance(se, oss.exceptions.ServiceError), se
    return se


def md5_b64(body):
    return base64.b64encode(hashlib.md5(body).digest()).decode()


def test_round_trip(server, bucket):
    c = client(server)
    k = key()
    put = c.put_object(oss.PutObjectRequest(bucket=bucket, key=k, body=b'{"a":1}',
                                            content_type="application/json"))
    etag = '"%s"' % hashlib.md5(b'{"a":1}').hexdigest().upper()
    assert put.etag == etag and put.content_md5 == md5_b64(b'{"a":1}')
    assert put.request_id and len(put.request_id) == 24
    got = c.get_object(oss.GetObjectRequest(bucket=bucket, key=k))
    assert got.body.read() == b'{"a":1}'
    assert (got.etag, got.content_type) == (etag, "application/json")
    head = c.head_object(oss.HeadObjectRequest(bucket=bucket, key=k))
    assert (head.content_length, head.etag) == (7, etag)
    c.delete_object(oss.DeleteObjectRequest(bucket=bucket, key=k))
    # Deleting again is no error, as on OSS.
    c.delete_object(oss.DeleteObjectRequest(bucket=bucket, key=k))
    se = service_error(lambda: c.get_object(oss.GetObjectRequest(bucket=bucket, key=k)))
    assert (se.status_code, se.code) == (404, "NoSuchKey") and se.ec and se.request_id
    # HEAD errors have no body: the SDK sees a bare 404.
    se = service_error(lambda: c.head_object(oss.HeadObjectRequest(bucket=bucket, key=k)))
    assert (se.status_code, se.code) == (404, "BadErrorResponse") and se.request_id


def test_forbid_overwrite(server, bucket):
    c = client(server)
    k = key()
    put = lambda body, **kw: c.put_object(oss.PutObjectRequest(bucket=bucket, key=k, body=body, **kw))
    put(b"first", forbid_overwrite=True)
    se = service_error(lambda: put(b"second", forbid_overwrite=True))
    assert (se.status_code, se.code) == (409, "FileAlreadyExists")
    assert c.get_object(oss.GetObjectRequest(bucket=bucket, key=k)).body.read() == b"first"
    # Without the header, overwriting is allowed.
    put(b"third")
    assert c.get_object(oss.GetObjectRequest(bucket=bucket, key=k)).body.read() == b"third"


@pytest.mark.parametrize("status", ["Enabled", "Suspended"])
def test_versioned_bucket_ignores_forbid_overwrite(server, status):
    c = client(server)
    name = new_bucket(server, status)
    k = key()
    put = lambda body: c.put_object(oss.PutObjectRequest(bucket=name, key=k, body=body,
                                                         forbid_overwrite=True))
    put(b"first")
    second = put(b"second")
    assert c.get_object(oss.GetObjectRequest(bucket=name, key=k)).body.read() == b"second"
    if status == "Enabled":
        assert second.version_id and second.version_id != "null"
    else:
        assert second.version_id == "null"
    deleted = c.delete_object(oss.DeleteObjectRequest(bucket=name, key=k))
    assert deleted.delete_marker and deleted.version_id
    v = c.get_bucket_versioning(oss.GetBucketVersioningRequest(bucket=name))
    assert v.version_status == status


def test_unversioned_bucket_has_no_versioning_status(server, bucket):
    c = client(server)
    v = c.get_bucket_versioning(oss.GetBucketVersioningRequest(bucket=bucket))
    assert v.version_status is None
    put = c.put_object(oss.PutObjectRequest(bucket=bucket, key=key(), body=b"x"))
    assert put.version_id is None


def test_if_match_on_get_and_head(server, bucket):
    c = client(server)
    k = key()
    etag = c.put_object(oss.PutObjectRequest(bucket=bucket, key=k, body=b"v1")).etag
    got = c.get_object(oss.GetObjectRequest(bucket=bucket, key=k, if_match=etag))
    assert got.body.read() == b"v1"
    c.put_object(oss.PutObjectRequest(bucket=bucket, key=k, body=b"v2"))
    se = service_error(lambda: c.get_object(oss.GetObjectRequest(bucket=bucket, key=k, if_match=etag)))
    assert (se.status_code, se.code) == (412, "PreconditionFailed")
    se = service_error(lambda: c.head_object(oss.HeadObjectRequest(bucket=bucket, key=k, if_match=etag)))
    assert se.status_code == 412


def test_list_objects_v2_pages_with_prefix(server, bucket):
    c = client(server)
    prefix = "team/states/"
    keys = sorted(prefix + "k%02d" % i for i in range(7)) + [prefix + "sub/a"]
    for k in keys + ["team/other", "zzz"]:
        c.put_object(oss.PutObjectRequest(bucket=bucket, key=k, body=b"x" * len(k)))
    first = c.list_objects_v2(oss.ListObjectsV2Request(bucket=bucket, prefix=prefix, max_keys=3))
    assert [o.key for o in first.contents] == keys[:3]
    assert first.is_truncated and first.next_continuation_token and first.key_count == 3
    pages = list(c.list_objects_v2_paginator().iter_page(
        oss.ListObjectsV2Request(bucket=bucket, prefix=prefix, max_keys=3)))
    assert [len(p.contents) for p in pages] == [3, 3, 2]
    listed = [o for p in pages for o in p.contents]
    assert [o.key for o in listed] == keys
    assert all(o.size == len(o.key) and o.last_modified for o in listed)
    se = service_error(lambda: c.list_objects_v2(
        oss.ListObjectsV2Request(bucket=bucket, max_keys=1001)))
    assert (se.status_code, se.code) == (400, "InvalidArgument")
    after = list(c.list_objects_v2_paginator().iter_page(
        oss.ListObjectsV2Request(bucket=bucket, prefix=prefix, start_after=keys[4], max_keys=2)))
    assert [o.key for p in after for o in p.contents] == keys[5:]
    assert after[0].start_after == keys[4]


@pytest.mark.parametrize("ak,secret,code", [
    (AK, "wrong-secret", "SignatureDoesNotMatch"),
    ("LTAInobody", SECRET, "InvalidAccessKeyId"),
], ids=["wrong-secret", "unknown-key"])
def test_bad_credentials(server, bucket, ak, secret, code):
    c = client(server, ak, secret)
    se = service_error(lambda: c.put_object(oss.PutObjectRequest(bucket=bucket, key=key(), body=b"x")))
    assert (se.status_code, se.code) == (403, code)
    assert se.request_id and se.ec
    se = service_error(lambda: c.get_bucket_versioning(oss.GetBucketVersioningRequest(bucket=bucket)))
    assert (se.status_code, se.code) == (403, code)


def test_anonymous_requests_are_refused(server, bucket):
    c = client(server, anonymous=True)
    se = service_error(lambda: c.get_object(oss.GetObjectRequest(bucket=bucket, key=key())))
    assert (se.status_code, se.code) == (403, "AccessDenied")


def test_sts_token_is_required(server, bucket):
    k = key()
    client(server, STS_AK, STS_SECRET, STS_TOKEN).put_object(
        oss.PutObjectRequest(bucket=bucket, key=k, body=b"sts"))
    got = client(server, STS_AK, STS_SECRET, STS_TOKEN).get_object(oss.GetObjectRequest(bucket=bucket, key=k))
    assert got.body.read() == b"sts"
    # The same key pair without the token, and with a wrong one.
    for token, code in [(None, "InvalidAccessKeyId"), ("other", "InvalidSecurityToken")]:
        c = client(server, STS_AK, STS_SECRET, token)
        se = service_error(lambda: c.get_object(oss.GetObjectRequest(bucket=bucket, key=k)))
        assert (se.status_code, se.code) == (403, code)


def test_sse_and_acl_are_checked_stored_and_returned(server, bucket):
    c = client(server)
    k = key()
    put = c.put_object(oss.PutObjectRequest(bucket=bucket, key=k, body=b"s",
                                            server_side_encryption="AES256", acl="public-read"))
    assert put.headers["x-oss-server-side-encryption"] == "AES256"
    head = c.head_object(oss.HeadObjectRequest(bucket=bucket, key=k))
    assert head.server_side_encryption == "AES256"
    assert c.get_object(oss.GetObjectRequest(bucket=bucket, key=k)).server_side_encryption == "AES256"
    (stored,) = control(server, "GET", "/-/objects?bucket=" + bucket)
    assert (stored["acl"], stored["sse"]) == ("public-read", "AES256")
    se = service_error(lambda: c.put_object(oss.PutObjectRequest(bucket=bucket, key=key(), body=b"x",
                                                                 acl="everyone")))
    assert (se.status_code, se.code) == (400, "InvalidArgument")
    se = service_error(lambda: c.put_object(oss.PutObjectRequest(bucket=bucket, key=key(), body=b"x",
                                                                 server_side_encryption="DES")))
    assert (se.status_code, se.code) == (400, "InvalidEncryptionAlgorithmError")


def test_content_md5_is_verified(server, bucket):
    c = client(server)
    k = key()
    c.put_object(oss.PutObjectRequest(bucket=bucket, key=k, body=b"body", content_md5=md5_b64(b"body")))
    se = service_error(lambda: c.put_object(oss.PutObjectRequest(bucket=bucket, key=k, body=b"body",
                                                                 content_md5=md5_b64(b"other"))))
    assert (se.status_code, se.code) == (400, "InvalidDigest")
    assert c.get_object(oss.GetObjectRequest(bucket=bucket, key=k)).body.read() == b"body"


@pytest.mark.parametrize("call", [
    lambda c, b: c.list_objects(oss.ListObjectsRequest(bucket=b)),
    lambda c, b: c.list_objects_v2(oss.ListObjectsV2Request(bucket=b, delimiter="/")),
    lambda c, b: c.put_bucket_versioning(oss.PutBucketVersioningRequest(
        bucket=b, versioning_configuration=oss.VersioningConfiguration(status="Enabled"))),
    lambda c, b: c.get_object_acl(oss.GetObjectAclRequest(bucket=b, key="k")),
], ids=["list-objects-v1", "delimiter", "put-bucket-versioning", "object-acl"])
def test_what_stategate_does_not_send_is_refused(server, bucket, call):
    se = service_error(lambda: call(client(server), bucket))
    assert (se.status_code, se.code) == (400, "NotImplemented")


def test_control_endpoints(server):
    name = new_bucket(server, "Suspended")
    client(server).put_object(oss.PutObjectRequest(bucket=name, key="a/b", body=b"12345", acl="private"))
    control(server, "PUT", "/-/objects?bucket=%s&key=c" % name)
    listing = control(server, "GET", "/-/objects?bucket=" + name)
    assert listing == [
        {"key": "a/b", "size": 5, "etag": '"%s"' % hashlib.md5(b"12345").hexdigest().upper(),
         "acl": "private", "sse": None, "content_type": "application/octet-stream", "version_id": "null"},
        {"key": "c", "size": 0, "etag": '"%s"' % hashlib.md5(b"").hexdigest().upper(),
         "acl": "default", "sse": None, "content_type": "application/octet-stream", "version_id": None},
    ]
    with urllib.request.urlopen(server + "/-/objects?bucket=%s&key=a/b" % name) as resp:
        assert resp.read() == b"12345"


def test_deleted_bucket_answers_as_oss_does(server):
    name = new_bucket(server)
    c = client(server)
    c.put_object(oss.PutObjectRequest(bucket=name, key="k", body=b"{}"))
    control(server, "DELETE", "/-/buckets?name=" + name)
    se = service_error(lambda: c.get_object(oss.GetObjectRequest(bucket=name, key="k")))
    assert (se.status_code, se.code) == (404, "NoSuchBucket")
    se = service_error(lambda: c.get_bucket_versioning(oss.GetBucketVersioningRequest(bucket=name)))
    assert (se.status_code, se.code) == (404, "NoSuchBucket")
    # HEAD has no body, so a missing bucket looks like a missing object.
    se = service_error(lambda: c.head_object(oss.HeadObjectRequest(bucket=name, key="k")))
    assert (se.status_code, se.code) == (404, "BadErrorResponse")


def test_exits_when_stdin_closes():
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "oss_server.py")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("listening on 127.0.0.1:")
    proc.stdin.close()
    start = time.time()
    assert proc.wait(timeout=10) == 0
    assert time.time() - start < 10
