"""Proves oidc_issuer.py faithful to OpenID Connect and JOSE by checking it
with PyJWT, a standard client that shares no code with it (the issuer signs
with `cryptography` directly): discovery, the JWK Set, RS256 and ES256
signatures, the registered claims, key rotation, and the control endpoints
the stategate tests rely on.

Run: .venv/bin/python -m pytest tests/peers/test_oidc_issuer.py
"""

import base64
import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

try:
    import jwt
except ImportError as e:  # fail, never skip: the test needs the real client
    raise ImportError(
        "%s: run `python3 -m venv .venv && .venv/bin/pip install -r tests/peers/requirements.txt`" % e
    ) from e

HERE = os.path.dirname(os.path.abspath(__file__))
AUD = "stategate"
ALGS = ["RS256", "ES256"]

# Claims as GitHub Actions puts them in a job's token (see the GitHub
# documentation on OIDC); iss is this issuer's.
GITHUB_CLAIMS = {
    "aud": AUD,
    "sub": "repo:octo-org/infra:ref:refs/heads/main",
    "repository": "octo-org/infra",
    "repository_owner": "octo-org",
    "repository_id": "74",
    "repository_owner_id": "65",
    "repository_visibility": "private",
    "ref": "refs/heads/main",
    "ref_type": "branch",
    "ref_protected": "true",
    "environment": "prod",
    "workflow": "deploy",
    "job_workflow_ref": "octo-org/infra/.github/workflows/deploy.yml@refs/heads/main",
    "event_name": "push",
    "actor": "octocat",
    "actor_id": "12",
    "run_id": "5309124861",
    "run_number": "17",
    "run_attempt": "1",
    "sha": "c6f3ce5a6e1a2bdbd6a6e3ecf6a2d5c0a8fbd9f1",
    "head_ref": "",
    "base_ref": "",
    "workflow_ref": "octo-org/infra/.github/workflows/deploy.yml@refs/heads/main",
    "runner_environment": "github-hosted",
}


def start(*args):
    proc = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "oidc_issuer.py"), *args],
        stdout=subprocess.PIPE, text=True,
    )
    line = proc.stdout.readline()
    assert line.startswith("listening on http://127.0.0.1:"), line
    return proc, line.split()[-1]


def stop(proc):
    proc.kill()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def base():
    proc, url = start()
    yield url
    stop(proc)


@pytest.fixture
def fresh():
    """An issuer of its own, for tests that rotate keys, fail or count."""
    proc, url = start("--path", "/gitlab")
    yield url, url + "/gitlab"
    stop(proc)


def call(url, body=None, method=None):
    """(status, JSON answer) of one request."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def mint(control_base, **request):
    status, answer = call(control_base + "/-/mint", request)
    assert status == 200, answer
    return answer["token"]


def discover(issuer):
    status, config = call(issuer + "/.well-known/openid-configuration")
    assert status == 200, config
    return config


def verify(token, issuer, audience=AUD, client=None, algorithms=ALGS):
    """What a relying party does: discovery, then the key by kid from the
    JWKS, then signature and claims."""
    config = discover(issuer)
    client = client or jwt.PyJWKClient(config["jwks_uri"], cache_keys=False)
    key = client.get_signing_key_from_jwt(token)
    return jwt.decode(token, key=key, algorithms=algorithms, audience=audience,
                      issuer=config["issuer"], options={"require": ["exp", "iat", "iss", "aud", "sub"]})


def segments(token):
    def part(s):
        return json.loads(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))
    h, p, sig = token.split(".")
    return part(h), part(p), sig


# ---- discovery and the JWK Set ----------------------------------------------

def test_discovery_document(base):
    config = discover(base)
    assert config == {
        "issuer": base,
        "jwks_uri": base + "/jwks",
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
    }


def test_jwks_is_rfc7517_and_loads_in_pyjwt(base):
    status, jwks = call(base + "/jwks")
    assert status == 200
    keys = {k["alg"]: k for k in jwks["keys"]}
    assert set(keys) == {"RS256", "ES256"} and len(jwks["keys"]) == 2
    rsa, ec = keys["RS256"], keys["ES256"]
    assert set(rsa) == {"kty", "n", "e", "kid", "alg", "use"}
    assert (rsa["kty"], rsa["e"], rsa["use"]) == ("RSA", "AQAB", "sig")
    assert set(ec) == {"kty", "crv", "x", "y", "kid", "alg", "use"}
    assert (ec["kty"], ec["crv"], ec["use"]) == ("EC", "P-256", "sig")
    for k in (rsa, ec):  # base64url without padding
        for member in ("n", "e", "x", "y"):
            if member in k:
                assert "=" not in k[member] and "+" not in k[member] and "/" not in k[member]
    assert len(base64.urlsafe_b64decode(rsa["n"] + "==")) == 256  # 2048 bits, no leading zero
    assert len(base64.urlsafe_b64decode(ec["x"] + "=")) == 32
    assert len(base64.urlsafe_b64decode(ec["y"] + "=")) == 32
    assert rsa["kid"] != ec["kid"]
    loaded = jwt.PyJWKSet.from_dict(jwks)
    assert {k.key_id for k in loaded.keys} == {rsa["kid"], ec["kid"]}
    # kids are RFC 7638 thumbprints
    for k in jwks["keys"]:
        assert k["kid"] == thumbprint(k)


def thumbprint(k):
    required = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y")}[k["kty"]]
    canonical = json.dumps({m: k[m] for m in required}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def test_issuer_under_a_path(fresh):
    root, issuer = fresh
    config = discover(issuer)
    assert config["issuer"] == issuer and config["jwks_uri"] == issuer + "/jwks"
    # no issuer at the root when only /gitlab was asked for
    assert call(root + "/.well-known/openid-configuration")[0] == 404
    token = mint(root, claims={"aud": AUD, "sub": "project_path:group/infra:ref_type:branch:ref:main"})
    assert segments(token)[1]["iss"] == issuer
    assert verify(token, issuer)["sub"].startswith("project_path:")
    # the issuer's own control path addresses the same issuer
    assert segments(mint(issuer, claims={}))[1]["iss"] == issuer


def test_two_issuers_in_one_process_have_their_own_keys():
    proc, root = start("--path", "/github", "--path", "/gitlab")
    try:
        gh, gl = root + "/github", root + "/gitlab"
        kids = lambda issuer: {k["kid"] for k in call(issuer + "/jwks")[1]["keys"]}
        assert not kids(gh) & kids(gl)
        token = mint(gl, claims={"aud": AUD, "sub": "s"})
        assert verify(token, gl)["iss"] == gl
        with pytest.raises(jwt.PyJWKClientError):
            verify(token, gh)
        assert verify(mint(root, claims={"aud": AUD, "sub": "s"}), gh)["iss"] == gh  # /-/ = first
    finally:
        stop(proc)


# ---- signatures and claims ---------------------------------------------------

@pytest.mark.parametrize("alg", ALGS)
def test_minted_token_verifies_with_pyjwkclient(base, alg):
    token = mint(base, alg=alg, claims={"aud": AUD, "sub": "repo:o/r:ref:refs/heads/main"})
    header, _, _ = segments(token)
    assert header == {"alg": alg, "kid": header["kid"], "typ": "JWT"}
    client = jwt.PyJWKClient(discover(base)["jwks_uri"])
    key = client.get_signing_key_from_jwt(token)
    assert key.key_id == header["kid"] and key.algorithm_name == alg
    claims = jwt.decode(token, key=key, algorithms=ALGS, audience=AUD, issuer=base)
    assert claims["iss"] == discover(base)["issuer"]
    now = time.time()
    assert claims["iat"] <= now + 1 and claims["nbf"] <= now + 1
    assert claims["exp"] - claims["iat"] == 300
    assert isinstance(claims["jti"], str) and claims["jti"]


def test_github_actions_claims_round_trip(base):
    token = mint(base, claims=GITHUB_CLAIMS, ttl=600)
    claims = verify(token, base)
    for name, value in GITHUB_CLAIMS.items():
        assert claims[name] == value, name
    assert claims["exp"] - claims["iat"] == 600
    assert set(claims) == set(GITHUB_CLAIMS) | {"iss", "iat", "nbf", "exp", "jti"}


def test_caller_claims_override_defaults_and_null_removes(base):
    token = mint(base, claims={"aud": [AUD, "other"], "sub": "s", "iss": "https://token.actions.githubusercontent.com",
                               "jti": "fixed", "nbf": None})
    _, payload, _ = segments(token)
    assert payload["iss"] == "https://token.actions.githubusercontent.com"
    assert payload["jti"] == "fixed" and "nbf" not in payload
    with pytest.raises(jwt.InvalidIssuerError):
        verify(token, base)
    key = jwt.PyJWKClient(base + "/jwks").get_signing_key_from_jwt(token)
    claims = jwt.decode(token, key=key, algorithms=ALGS, audience=AUD,
                        issuer="https://token.actions.githubusercontent.com")
    assert claims["aud"] == [AUD, "other"]


@pytest.mark.parametrize("alg", ALGS)
def test_expired_token(base, alg):
    token = mint(base, alg=alg, claims={"aud": AUD, "sub": "s"}, ttl=-60)
    with pytest.raises(jwt.ExpiredSignatureError):
        verify(token, base)


def test_not_yet_valid_token(base):
    token = mint(base, claims={"aud": AUD, "sub": "s"}, nbf_offset=120)
    with pytest.raises(jwt.ImmatureSignatureError):
        verify(token, base)


def test_wrong_audience(base):
    token = mint(base, claims={"aud": "https://github.com/octo-org", "sub": "s"})
    with pytest.raises(jwt.InvalidAudienceError):
        verify(token, base)


def test_alg_none_is_refused(base):
    token = mint(base, alg="none", claims={"aud": AUD, "sub": "s"})
    header, payload, signature = segments(token)
    assert header == {"alg": "none", "typ": "JWT"}
    assert signature == "" and token.endswith(".")
    assert payload["aud"] == AUD
    # A relying party that pins RS256/ES256 refuses it, whatever key it holds.
    some_key = jwt.PyJWKClient(base + "/jwks").get_signing_keys()[0]
    with pytest.raises(jwt.InvalidAlgorithmError):
        jwt.decode(token, key=some_key, algorithms=ALGS, audience=AUD, issuer=base)
    # and it has no kid to look up
    with pytest.raises(jwt.PyJWKClientError):
        jwt.PyJWKClient(base + "/jwks").get_signing_key_from_jwt(token)


def test_hs256_key_confusion_is_refused(base):
    token = mint(base, alg="HS256", claims={"aud": AUD, "sub": "s"})
    header, _, _ = segments(token)
    assert header["alg"] == "HS256"
    key = jwt.PyJWKClient(base + "/jwks").get_signing_key_from_jwt(token)
    assert key.algorithm_name == "RS256"
    with pytest.raises(jwt.InvalidAlgorithmError):
        jwt.decode(token, key=key, algorithms=ALGS, audience=AUD, issuer=base)


@pytest.mark.parametrize("alg", ALGS)
def test_tampered_token(base, alg):
    token = mint(base, alg=alg, claims={"aud": AUD, "sub": "s"}, tamper=True)
    _, payload, _ = segments(token)  # still valid JSON, same claims
    assert payload["aud"] == AUD and payload["sub"] == "s"
    with pytest.raises(jwt.InvalidSignatureError):
        verify(token, base)


def test_unknown_key_is_not_in_the_jwks(base):
    token = mint(base, claims={"aud": AUD, "sub": "s"}, key="unknown")
    kid = segments(token)[0]["kid"]
    assert kid not in {k["kid"] for k in call(base + "/jwks")[1]["keys"]}
    with pytest.raises(jwt.PyJWKClientError, match="Unable to find a signing key"):
        verify(token, base)


def test_kid_override(base):
    # Signed by the EC key but naming the RSA key's kid: the key found does
    # not verify the signature.
    rsa_kid = next(k["kid"] for k in call(base + "/jwks")[1]["keys"] if k["alg"] == "RS256")
    token = mint(base, alg="ES256", kid=rsa_kid, claims={"aud": AUD, "sub": "s"})
    assert segments(token)[0]["kid"] == rsa_kid
    with pytest.raises(jwt.PyJWTError):
        verify(token, base)
    # kid null: no kid in the header
    token = mint(base, kid=None, claims={"aud": AUD, "sub": "s"})
    assert "kid" not in segments(token)[0]
    with pytest.raises(jwt.PyJWKClientError):
        verify(token, base)


def test_mint_rejects_bad_requests(base):
    for body in ({"alg": "HS512"}, {"key": "old"}, {"ttl": "5"}, {"claims": []}, {"bogus": 1}):
        status, answer = call(base + "/-/mint", body)
        assert status == 400 and answer["error"], body
    assert call(base + "/-/mint", {"key": "retired"})[0] == 409  # nothing rotated yet
    assert call(base + "/-/nope", {})[0] == 404


# ---- rotation ---------------------------------------------------------------

@pytest.mark.parametrize("alg", ALGS)
def test_rotation(fresh, alg):
    root, issuer = fresh
    before = mint(root, alg=alg, claims={"aud": AUD, "sub": "s"})
    old_kid = segments(before)[0]["kid"]
    status, kids = call(root + "/-/rotate", {})
    assert status == 200 and kids["retired"][alg] == old_kid and kids["current"][alg] != old_kid
    listed = [k["kid"] for k in call(issuer + "/jwks")[1]["keys"]]
    assert listed[:2] == [kids["current"]["RS256"], kids["current"]["ES256"]]
    assert old_kid in listed and len(listed) == 4

    after = mint(root, alg=alg, claims={"aud": AUD, "sub": "s"})
    assert segments(after)[0]["kid"] == kids["current"][alg]
    assert verify(after, issuer, client=jwt.PyJWKClient(issuer + "/jwks"))["sub"] == "s"
    retired = mint(root, alg=alg, key="retired", claims={"aud": AUD, "sub": "s"})
    assert segments(retired)[0]["kid"] == old_kid
    assert verify(retired, issuer)["sub"] == "s"
    assert verify(before, issuer)["sub"] == "s"

    # One more rotation: the first key leaves the JWKS.
    call(root + "/-/rotate", {})
    listed = [k["kid"] for k in call(issuer + "/jwks")[1]["keys"]]
    assert old_kid not in listed and kids["current"][alg] in listed and len(listed) == 4
    with pytest.raises(jwt.PyJWKClientError):
        verify(before, issuer)
    assert verify(after, issuer)["sub"] == "s"


def test_cached_client_misses_the_new_kid_until_it_refetches(fresh):
    """PyJWKClient caches the JWKS and refetches once on an unknown kid, as a
    careful relying party does; the stats show each fetch."""
    root, issuer = fresh
    try:  # no cooldown between refetches (recent PyJWT waits 30 s by default)
        client = jwt.PyJWKClient(issuer + "/jwks", cache_jwk_set=True, lifespan=300, cooldown_duration=0)
    except TypeError:
        client = jwt.PyJWKClient(issuer + "/jwks", cache_jwk_set=True, lifespan=300)
    verify(mint(root, claims={"aud": AUD, "sub": "s"}), issuer, client=client)
    verify(mint(root, claims={"aud": AUD, "sub": "s"}), issuer, client=client)
    assert call(root + "/-/stats")[1]["jwks_requests"] == 1
    call(root + "/-/rotate", {})
    verify(mint(root, claims={"aud": AUD, "sub": "s"}), issuer, client=client)
    assert call(root + "/-/stats")[1]["jwks_requests"] == 2


# ---- control: failure and stats -------------------------------------------

def test_fail_makes_discovery_and_jwks_answer_that_status(fresh):
    root, issuer = fresh
    assert call(root + "/-/fail", {"status": 503})[0] == 200
    assert call(issuer + "/.well-known/openid-configuration")[0] == 503
    assert call(issuer + "/jwks")[0] == 503
    token = mint(root, claims={"aud": AUD, "sub": "s"})  # minting still works
    with pytest.raises(jwt.PyJWKClientConnectionError):
        jwt.PyJWKClient(issuer + "/jwks").get_signing_key_from_jwt(token)
    assert call(root + "/-/fail", {"status": 0})[0] == 200
    assert verify(token, issuer)["sub"] == "s"
    assert call(root + "/-/fail", {"status": 42})[0] == 400


def test_fail_delay(fresh):
    root, issuer = fresh
    call(root + "/-/fail", {"status": 0, "delay": 0.5})
    started = time.monotonic()
    assert call(issuer + "/jwks")[0] == 200
    assert time.monotonic() - started >= 0.5
    call(root + "/-/fail", {"status": 0})


def test_fail_only_one_endpoint(fresh):
    root, issuer = fresh
    assert call(root + "/-/fail", {"status": 500, "only": "jwks"})[0] == 200
    assert call(issuer + "/.well-known/openid-configuration")[0] == 200
    assert call(issuer + "/jwks")[0] == 500
    assert call(root + "/-/fail", {"status": 500, "only": "discovery"})[0] == 200
    assert call(issuer + "/.well-known/openid-configuration")[0] == 500
    assert call(issuer + "/jwks")[0] == 200
    assert call(root + "/-/fail", {"status": 500, "only": "keys"})[0] == 400
    assert call(root + "/-/fail", {"status": 0})[0] == 200
    assert call(issuer + "/.well-known/openid-configuration")[0] == 200


def test_discovery_can_name_another_jwks_uri(fresh):
    root, issuer = fresh
    assert call(root + "/-/discovery", {"jwks_uri": "http://keys.example.com/jwks"})[0] == 200
    assert discover(issuer)["jwks_uri"] == "http://keys.example.com/jwks"
    assert call(root + "/-/discovery", {"jwks_uri": 7})[0] == 400
    assert call(root + "/-/discovery", {"jwks_uri": None})[0] == 200
    assert discover(issuer)["jwks_uri"] == issuer + "/jwks"


def test_stats_count_requests(fresh):
    root, issuer = fresh
    assert call(root + "/-/stats")[1] == {"jwks_requests": 0, "discovery_requests": 0}
    discover(issuer)
    call(issuer + "/jwks")
    call(issuer + "/jwks")
    call(root + "/-/fail", {"status": 500})
    call(issuer + "/jwks")  # failed requests count too
    call(root + "/-/fail", {"status": 0})
    mint(root, claims={})  # control requests do not count
    assert call(root + "/-/stats")[1] == {"jwks_requests": 3, "discovery_requests": 1}
    assert call(issuer + "/-/stats")[1] == {"jwks_requests": 3, "discovery_requests": 1}


def test_port_option_and_single_ready_line():
    proc, url = start("--port", "0")
    try:
        port = int(url.rsplit(":", 1)[1])
        assert port > 0
        stop(proc)
        proc, url = start("--port", str(port))
        assert url == "http://127.0.0.1:%d" % port
    finally:
        stop(proc)
    assert proc.stdout.read() == ""  # nothing after the ready line
