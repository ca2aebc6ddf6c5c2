"""Proves oss_server.py faithful to OSS by driving it with Alibaba's own
Python SDKs (oss2 and alibabacloud-oss-v2), not with stategate's client.

If the SDKs and the server disagree on a signature, an error code or a
header, these tests fail, so the server cannot drift into accepting only
what our Rust client happens to send.

Run: .venv/bin/python -m pytest tests/support/test_oss_server.py
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
    import oss2
except ImportError as e:  # fail, never skip: the test needs the real SDKs
    raise ImportError(
        "%s: run `python3 -m venv .venv && .venv/bin/pip install -r tests/support/requirements.txt`" % e
    ) from e

HERE = os.path.dirname(os.path.abspath(__file__))
ENDPOINT = "oss-cn-beijing.aliyuncs.com"
REGION = "cn-beijing"
AK, SECRET = "LTAItestkey", "test-secret-123"
STS_AK, STS_SECRET, STS_TOKEN = "STS.testkey", "sts-secret", "CAIS-token+/=abc"


@pytest.fixture(scope="module")
def server():
    proc = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "oss_server.py"),
         "--endpoint", ENDPOINT, "--region", REGION,
         "--credential", "%s:%s" % (AK, SECRET),
         "--credential", "%s:%s:%s" % (STS_AK, STS_SECRET, STS_TOKEN),
         "--bucket", "plain", "--bucket", "versioned=Enabled", "--bucket", "suspended=Suspended"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    line = proc.stdout.readline()
    assert line.startswith("listening on "), line
    addr = line.split()[-1]
    yield "http://" + addr
    proc.stdin.close()
    proc.wait(timeout=10)


def key():
    return "t/%s.json" % uuid.uuid4()


# ---- oss2 (signature V1 and V4, virtual-hosted through a proxy) ----------

def oss2_bucket(server, name="plain", auth=None, path_style=False):
    if path_style:
        return oss2.Bucket(auth or oss2.Auth(AK, SECRET), server, name, is_path_style=True)
    return oss2.Bucket(auth or oss2.Auth(AK, SECRET), "http://" + ENDPOINT, name,
                       proxies={"http": server}, region=REGION)


def test_oss2_v1_round_trip_virtual_hosted(server):
    b = oss2_bucket(server)
    k = key()
    put = b.put_object(k, b'{"a":1}', headers={"Content-Type": "application/json"})
    assert put.status == 200 and put.etag == hashlib.md5(b'{"a":1}').hexdigest().upper()
    got = b.get_object(k)
    assert got.read() == b'{"a":1}'
    assert got.headers["Content-Type"] == "application/json"
    assert got.request_id and len(got.request_id) == 24
    assert b.object_exists(k)
    b.delete_object(k)
    assert not b.object_exists(k)


def test_oss2_v1_path_style(server):
    b = oss2_bucket(server, path_style=True)
    k = key()
    b.put_object(k, b"x")
    assert b.get_object(k).read() == b"x"


def test_oss2_v4_round_trip(server):
    b = oss2_bucket(server, auth=oss2.ProviderAuthV4(oss2.credentials.StaticCredentialsProvider(AK, SECRET)))
    k = key()
    b.put_object(k, b"v4 body", headers={"Content-MD5": base64.b64encode(hashlib.md5(b"v4 body").digest()).decode()})
    assert b.get_object(k).read() == b"v4 body"
    assert [o.key for o in oss2.ObjectIteratorV2(b, prefix=k)] == [k]


@pytest.mark.parametrize("auth", [
    oss2.Auth(AK, "wrong-secret"),
    oss2.ProviderAuthV4(oss2.credentials.StaticCredentialsProvider(AK, "wrong-secret")),
], ids=["v1", "v4"])
def test_oss2_wrong_secret_is_signature_does_not_match(server, auth):
    with pytest.raises(oss2.exceptions.ServerError) as err:
        oss2_bucket(server, auth=auth).put_object(key(), b"x")
    assert err.value.status == 403
    assert err.value.code == "SignatureDoesNotMatch"
    assert err.value.request_id


def test_oss2_unknown_key_id(server):
    with pytest.raises(oss2.exceptions.ServerError) as err:
        oss2_bucket(server, auth=oss2.Auth("LTAInobody", SECRET)).get_object(key())
    assert (err.value.status, err.value.code) == (403, "InvalidAccessKeyId")


def test_oss2_error_codes_parse(server):
    b = oss2_bucket(server)
    with pytest.raises(oss2.exceptions.NoSuchKey) as err:
        b.get_object(key())
    assert err.value.ec and err.value.request_id
    with pytest.raises(oss2.exceptions.NoSuchBucket):
        oss2_bucket(server, name="missing-bucket").get_object(key())
    with pytest.raises(oss2.exceptions.InvalidDigest):
        b.put_object(key(), b"body", headers={"Content-MD5": base64.b64encode(hashlib.md5(b"other").digest()).decode()})
    with pytest.raises(oss2.exceptions.InvalidArgument):
        b.put_object(key(), b"body", headers={"x-oss-object-acl": "everyone"})
    with pytest.raises(oss2.exceptions.AccessDenied):
        oss2.Bucket(oss2.AnonymousAuth(), "http://" + ENDPOINT, "plain",
                    proxies={"http": server}).get_object(key())


def test_oss2_forbid_overwrite(server):
    b = oss2_bucket(server)
    k = key()
    b.put_object(k, b"first", headers={"x-oss-forbid-overwrite": "true"})
    with pytest.raises(oss2.exceptions.ServerError) as err:
        b.put_object(k, b"second", headers={"x-oss-forbid-overwrite": "true"})
    assert (err.value.status, err.value.code) == (409, "FileAlreadyExists")
    assert b.get_object(k).read() == b"first"
    # Without the header, overwriting is allowed.
    b.put_object(k, b"third")
    assert b.get_object(k).read() == b"third"


@pytest.mark.parametrize("name", ["versioned", "suspended"])
def test_oss2_versioned_bucket_ignores_forbid_overwrite(server, name):
    b = oss2_bucket(server, name=name)
    k = key()
    b.put_object(k, b"first", headers={"x-oss-forbid-overwrite": "true"})
    b.put_object(k, b"second", headers={"x-oss-forbid-overwrite": "true"})
    assert b.get_object(k).read() == b"second"
    status = b.get_bucket_versioning().status
    assert status == ("Enabled" if name == "versioned" else "Suspended")


def test_oss2_sse_and_acl_round_trip(server):
    b = oss2_bucket(server)
    k = key()
    put = b.put_object(k, b"secret", headers={"x-oss-server-side-encryption": "AES256",
                                              "x-oss-object-acl": "public-read"})
    assert put.headers["x-oss-server-side-encryption"] == "AES256"
    head = b.head_object(k)
    assert head.headers["x-oss-server-side-encryption"] == "AES256"
    assert b.get_object(k).headers["x-oss-server-side-encryption"] == "AES256"
    assert b.get_object_acl(k).acl == "public-read"
    b.put_object_acl(k, oss2.OBJECT_ACL_PRIVATE)
    assert b.get_object_acl(k).acl == "private"


def test_oss2_sts_token_is_required(server):
    k = key()
    good = oss2.StsAuth(STS_AK, STS_SECRET, STS_TOKEN)
    oss2_bucket(server, auth=good).put_object(k, b"sts")
    # The same key pair without the token, and with a wrong one.
    with pytest.raises(oss2.exceptions.ServerError) as err:
        oss2_bucket(server, auth=oss2.Auth(STS_AK, STS_SECRET)).get_object(k)
    assert (err.value.status, err.value.code) == (403, "InvalidAccessKeyId")
    with pytest.raises(oss2.exceptions.ServerError) as err:
        oss2_bucket(server, auth=oss2.StsAuth(STS_AK, STS_SECRET, "other")).get_object(k)
    assert (err.value.status, err.value.code) == (403, "InvalidSecurityToken")
    # V1 presigned URL carries the token in the query.
    url = oss2_bucket(server, auth=good, path_style=True).sign_url("GET", k, 60)
    assert "security-token=" in url
    assert urllib.request.urlopen(url).read() == b"sts"


def test_oss2_presigned_urls_v1(server):
    b = oss2_bucket(server, path_style=True)
    k = key()
    # Content-Type is part of a V1 signature: sign the one urllib will send.
    ctype = {"Content-Type": "application/octet-stream"}
    put_url = b.sign_url("PUT", k, 60, headers=ctype)
    req = urllib.request.Request(put_url, data=b"via url", method="PUT", headers=ctype)
    assert urllib.request.urlopen(req).status == 200
    assert urllib.request.urlopen(b.sign_url("GET", k, 60)).read() == b"via url"
    tampered = b.sign_url("GET", k, 60).replace("Expires=", "Expires=1")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(tampered)
    assert err.value.code == 403 and b"SignatureDoesNotMatch" in err.value.read()


def test_oss2_list_objects_v1_and_v2_paginate(server):
    b = oss2_bucket(server)
    prefix = "list-%s/" % uuid.uuid4()
    keys = sorted(prefix + "k%02d" % i for i in range(7)) + [prefix + "sub/a", prefix + "sub/b"]
    for k in keys:
        b.put_object(k, b"x")
    assert [o.key for o in oss2.ObjectIterator(b, prefix=prefix, max_keys=2)] == sorted(keys)
    assert [o.key for o in oss2.ObjectIteratorV2(b, prefix=prefix, max_keys=3)] == sorted(keys)
    listed = b.list_objects_v2(prefix=prefix, delimiter="/", max_keys=100)
    assert listed.prefix_list == [prefix + "sub/"]
    assert len(listed.object_list) == 7


# ---- alibabacloud-oss-v2 (signature V4 by default) ------------------------

def v2_client(server, ak=AK, secret=SECRET, token=None, path_style=False):
    cfg = oss.config.load_default()
    cfg.credentials_provider = oss.credentials.StaticCredentialsProvider(ak, secret, token)
    cfg.region = REGION
    cfg.retry_max_attempts = 1
    if path_style:
        cfg.endpoint = server
        cfg.use_path_style = True
    else:
        cfg.endpoint = "http://" + ENDPOINT
        # The SDK's string form maps to requests keys that never match; the
        # dict form is passed through.
        cfg.proxy_host = {"http": server}
    return oss.Client(cfg)


@pytest.mark.parametrize("path_style", [False, True], ids=["virtual-hosted", "path-style"])
def test_v2_v4_round_trip(server, path_style):
    c = v2_client(server, path_style=path_style)
    k = key()
    c.put_object(oss.PutObjectRequest(bucket="plain", key=k, body=b"hello v2"))
    got = c.get_object(oss.GetObjectRequest(bucket="plain", key=k))
    assert got.body.read() == b"hello v2"
    assert got.etag == '"%s"' % hashlib.md5(b"hello v2").hexdigest().upper()
    head = c.head_object(oss.HeadObjectRequest(bucket="plain", key=k))
    assert head.content_length == 8
    listed = c.list_objects_v2(oss.ListObjectsV2Request(bucket="plain", prefix=k))
    assert [o.key for o in listed.contents] == [k]
    c.delete_object(oss.DeleteObjectRequest(bucket="plain", key=k))
    assert not c.is_object_exist("plain", k)


def test_v2_wrong_secret_is_signature_does_not_match(server):
    c = v2_client(server, secret="wrong")
    with pytest.raises(oss.exceptions.OperationError) as err:
        c.put_object(oss.PutObjectRequest(bucket="plain", key=key(), body=b"x"))
    se = err.value.unwrap()
    assert isinstance(se, oss.exceptions.ServiceError)
    assert (se.status_code, se.code) == (403, "SignatureDoesNotMatch")
    assert se.request_id and se.ec


def test_v2_forbid_overwrite_and_versioning(server):
    c = v2_client(server)
    k = key()
    req = lambda b, body: oss.PutObjectRequest(bucket=b, key=k, body=body, forbid_overwrite=True)
    c.put_object(req("plain", b"1"))
    with pytest.raises(oss.exceptions.OperationError) as err:
        c.put_object(req("plain", b"2"))
    se = err.value.unwrap()
    assert (se.status_code, se.code) == (409, "FileAlreadyExists")
    c.put_object(req("versioned", b"1"))
    second = c.put_object(req("versioned", b"2"))
    assert second.version_id
    v = c.get_bucket_versioning(oss.GetBucketVersioningRequest(bucket="versioned"))
    assert v.version_status == "Enabled"
    v = c.get_bucket_versioning(oss.GetBucketVersioningRequest(bucket="plain"))
    assert v.version_status is None


def test_v2_sse_acl_and_sts(server):
    c = v2_client(server, STS_AK, STS_SECRET, STS_TOKEN)
    k = key()
    c.put_object(oss.PutObjectRequest(bucket="plain", key=k, body=b"s", server_side_encryption="AES256",
                                      acl="public-read-write"))
    head = c.head_object(oss.HeadObjectRequest(bucket="plain", key=k))
    assert head.server_side_encryption == "AES256"
    acl = c.get_object_acl(oss.GetObjectAclRequest(bucket="plain", key=k))
    assert acl.acl == "public-read-write"
    c_no_token = v2_client(server, STS_AK, STS_SECRET)
    with pytest.raises(oss.exceptions.OperationError) as err:
        c_no_token.get_object(oss.GetObjectRequest(bucket="plain", key=k))
    assert err.value.unwrap().code == "InvalidAccessKeyId"


def test_v2_presigned_v4_urls(server):
    c = v2_client(server, STS_AK, STS_SECRET, STS_TOKEN, path_style=True)
    k = key()
    # Content-Type is signed when present: sign the one urllib will send.
    put = c.presign(oss.PutObjectRequest(bucket="plain", key=k, content_type="text/plain"))
    assert "x-oss-signature-version=OSS4-HMAC-SHA256" in put.url
    req = urllib.request.Request(put.url, data=b"presigned v4", method="PUT",
                                 headers={"Content-Type": "text/plain"})
    assert urllib.request.urlopen(req).status == 200
    get = c.presign(oss.GetObjectRequest(bucket="plain", key=k))
    assert urllib.request.urlopen(get.url).read() == b"presigned v4"
    bad = get.url.replace("x-oss-signature=", "x-oss-signature=0")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(bad)
    assert err.value.code == 403 and b"SignatureDoesNotMatch" in err.value.read()


def test_v2_put_with_if_none_match_is_not_implemented(server):
    # OSS has no conditional PutObject; the official SDK passes the header
    # through and gets NotImplemented, which is why stategate locks with
    # x-oss-forbid-overwrite instead.
    c = v2_client(server)
    with pytest.raises(oss.exceptions.OperationError) as err:
        c.put_object(oss.PutObjectRequest(bucket="plain", key=key(), body=b"x",
                                          headers={"If-None-Match": "*"}))
    assert err.value.unwrap().code == "NotImplemented"


# ---- control endpoints used by the Rust tests -----------------------------

def test_control_endpoints(server):
    name = "ctl-%s" % uuid.uuid4().hex[:8]
    req = urllib.request.Request(server + "/-/buckets?name=%s&versioning=Suspended" % name, method="POST")
    assert urllib.request.urlopen(req).status == 200
    b = oss2_bucket(server, name=name)
    b.put_object("a/b", b"12345", headers={"x-oss-object-acl": "private"})
    listing = json.loads(urllib.request.urlopen(server + "/-/objects?bucket=" + name).read())
    assert listing == [{"key": "a/b", "size": 5, "etag": '"%s"' % hashlib.md5(b"12345").hexdigest().upper(),
                        "acl": "private", "sse": None, "content_type": "application/octet-stream",
                        "version_id": "null"}]


def test_deleted_bucket_answers_as_oss_does(server):
    name = "gone-%s" % uuid.uuid4().hex[:8]
    req = urllib.request.Request(server + "/-/buckets?name=%s" % name, method="POST")
    assert urllib.request.urlopen(req).status == 200
    b = oss2_bucket(server, name=name)
    b.put_object("k", b"{}")
    req = urllib.request.Request(server + "/-/buckets?name=%s" % name, method="DELETE")
    assert urllib.request.urlopen(req).status == 200
    with pytest.raises(oss2.exceptions.NoSuchBucket):
        b.get_object("k")
    # HEAD has no body, so a missing bucket looks like a missing object.
    with pytest.raises(oss2.exceptions.NotFound) as err:
        b.head_object("k")
    assert err.value.status == 404 and not err.value.code


def test_exits_when_stdin_closes():
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "oss_server.py")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("listening on 127.0.0.1:")
    proc.stdin.close()
    start = time.time()
    assert proc.wait(timeout=10) == 0
    assert time.time() - start < 10
