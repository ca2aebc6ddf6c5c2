#!/usr/bin/env python3
"""A local OpenID Connect issuer of CI identity tokens for stategate's tests.

GitHub Actions and GitLab CI hand a job an OIDC ID token (a JWT); a server
checks it against the issuer's discovery document and JSON Web Key Set.
There is no such issuer on a test machine, so this one stands in for it on
127.0.0.1. It signs with its own keys, made fresh on every run, and is proven
against the standards with PyJWT by ``tests/peers/test_oidc_issuer.py``.
Tokens are signed here with ``cryptography`` directly (not with PyJWT), so
those tests check this signer against an independent verifier.

OIDC endpoints (for an issuer path P, "" by default):

* ``GET P/.well-known/openid-configuration``: OpenID Connect Discovery 1.0,
  ``{"issuer", "jwks_uri", "id_token_signing_alg_values_supported":
  ["RS256", "ES256"], "response_types_supported": ["id_token"],
  "subject_types_supported": ["public"]}``. The issuer is
  ``http://127.0.0.1:PORT`` + P.
* ``GET P/jwks``: the public keys as an RFC 7517 JWK Set: an RSA 2048 key
  (kty, n, e, kid, alg RS256, use sig) and an EC P-256 key (kty, crv, x, y,
  kid, alg ES256, use sig), newest first, then the previous generation
  (kept for one rotation, as real issuers do while rotating). Each kid is the
  key's RFC 7638 thumbprint.

Test-only control endpoints under ``/-/``, unauthenticated, JSON in and out
(errors: ``{"error": "..."}`` with status 400, 404, 405 or 409). With several
issuers (``--path`` repeated) ``/-/...`` addresses the first one and
``P/-/...`` the issuer at P.

* ``POST /-/mint`` with ``{"claims": {...}, "alg": "RS256"|"ES256"|"none",
  "kid": ..., "key": "current"|"retired"|"unknown", "ttl": 300,
  "nbf_offset": 0, "tamper": false}``, every field optional, returns
  ``{"token": "...", "header": {...}, "claims": {...}}`` (the header and
  claims as signed). Defaults: ``iss`` (this issuer), ``iat`` and ``nbf``
  (now, ``nbf`` + ``nbf_offset``), ``exp`` (now + ``ttl``; a negative
  ``ttl`` gives an expired token), ``jti`` (random);
  ``claims`` override them, and a claim set to ``null`` is left out (a token
  with no ``exp``, say). The header is ``{"alg", "kid", "typ": "JWT"}``.
  ``alg`` ``"none"``: the header is exactly ``{"alg":"none","typ":"JWT"}``
  and the signature empty (``xxx.yyy.``). ``alg`` ``"HS256"``: the classic
  key-confusion forgery, HMAC-SHA256 keyed with the current RSA public key's
  PEM, under that key's kid. ``key``: ``"current"`` (default) signs with the
  listed newest key, ``"retired"`` with the previous generation (409 before
  any rotation), ``"unknown"`` with a key never listed in the JWKS, under its
  own kid. ``kid`` replaces the header's kid (a string), or with ``null``
  drops it. ``tamper``: after signing, one character of the payload is
  changed: a character of the ``jti`` value, so the payload is still valid
  JSON with the same claim names and only the signature check can catch it
  (if ``jti`` is not a string, a character of the encoded payload).
* ``POST /-/rotate``: new RSA and EC keys with new kids become current; the
  current ones become the previous generation (still listed, ``"retired"``);
  the generation before that leaves the JWKS. Returns
  ``{"current": {"RS256": kid, "ES256": kid}, "retired": {...}}``.
* ``GET /-/stats``: ``{"jwks_requests": N, "discovery_requests": M}``, every
  request counted, failed ones too.
* ``POST /-/fail`` with ``{"status": 503}``: discovery and JWKS answer that
  status (body ``{"error": "injected failure"}``) until ``{"status": 0}``.
  ``"delay": seconds`` (optional, default 0) holds their answers back that
  long, to show a client's timeout (a long delay is an issuer that hangs).
  ``"only": "jwks"`` or ``"discovery"`` (optional) limits the failure to
  that endpoint; the other one answers normally.
* ``POST /-/discovery`` with ``{"jwks_uri": "..."}``: the discovery
  document names that ``jwks_uri`` instead of this issuer's own, until
  ``{"jwks_uri": null}``.

Usage::

    oidc_issuer.py [--port 0] [--path /gitlab ...] [--exit-with-stdin] [--verbose]

When ready it prints exactly one line on stdout,
``listening on http://127.0.0.1:PORT``, then serves until killed (with
``--exit-with-stdin``, also until its standard input closes, like the other
test peers).
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

DISCOVERY = "/.well-known/openid-configuration"
JWKS = "/jwks"


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_uint(value, length=None):
    """An unsigned big-endian integer as RFC 7518 wants it: minimal length
    (RSA n, e), or exactly `length` octets (EC coordinates)."""
    if length is None:
        length = max(1, (value.bit_length() + 7) // 8)
    return b64url(value.to_bytes(length, "big"))


def compact_json(obj):
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def thumbprint(required_members):
    """RFC 7638 JWK thumbprint (SHA-256) of a JWK's required members."""
    canonical = json.dumps(required_members, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


class RsaKey:
    alg = "RS256"

    def __init__(self):
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        numbers = self.private.public_key().public_numbers()
        members = {"kty": "RSA", "n": b64url_uint(numbers.n), "e": b64url_uint(numbers.e)}
        self.kid = thumbprint(members)
        self.jwk = dict(members, kid=self.kid, alg=self.alg, use="sig")

    def sign(self, data):
        return self.private.sign(data, padding.PKCS1v15(), hashes.SHA256())

    def public_pem(self):
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


class EcKey:
    alg = "ES256"

    def __init__(self):
        self.private = ec.generate_private_key(ec.SECP256R1())
        numbers = self.private.public_key().public_numbers()
        members = {"kty": "EC", "crv": "P-256",
                   "x": b64url_uint(numbers.x, 32), "y": b64url_uint(numbers.y, 32)}
        self.kid = thumbprint(members)
        self.jwk = dict(members, kid=self.kid, alg=self.alg, use="sig")

    def sign(self, data):
        # JWS (RFC 7518 3.4) wants R || S, 32 octets each, not DER.
        r, s = decode_dss_signature(self.private.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


class Generation:
    """One RSA and one EC key, made and retired together."""

    def __init__(self):
        self.keys = {"RS256": RsaKey(), "ES256": EcKey()}

    def kids(self):
        return {alg: key.kid for alg, key in self.keys.items()}


class ControlError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


class Issuer:
    """One issuer: its keys, counters and injected failure."""

    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()
        self.current = Generation()
        self.previous = None
        self.unknown = Generation()  # never listed in the JWKS
        self.jwks_requests = 0
        self.discovery_requests = 0
        self.fail_status = 0
        self.fail_delay = 0.0
        self.fail_only = None  # None (both), DISCOVERY or JWKS
        self.jwks_uri = None  # None: this issuer's own

    def url(self, base):
        return base + self.path

    def discovery(self, base):
        issuer = self.url(base)
        with self.lock:
            jwks_uri = self.jwks_uri or issuer + JWKS
        return {
            "issuer": issuer,
            "jwks_uri": jwks_uri,
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
        }

    def jwks(self):
        with self.lock:
            generations = [self.current] + ([self.previous] if self.previous else [])
            return {"keys": [dict(g.keys[alg].jwk) for g in generations for alg in ("RS256", "ES256")]}

    def rotate(self):
        fresh = Generation()  # made outside the lock: RSA key generation is slow
        with self.lock:
            self.previous, self.current = self.current, fresh
            return {"current": self.current.kids(), "retired": self.previous.kids()}

    def mint(self, base, request):
        if not isinstance(request, dict):
            raise ControlError(400, "the body must be a JSON object")
        unknown_fields = set(request) - {"claims", "alg", "kid", "key", "ttl", "nbf_offset", "tamper"}
        if unknown_fields:
            raise ControlError(400, "unknown fields: %s" % ", ".join(sorted(unknown_fields)))
        claims = request.get("claims", {})
        if claims is None:
            claims = {}
        if not isinstance(claims, dict):
            raise ControlError(400, "claims must be a JSON object")
        alg = request.get("alg", "RS256")
        if alg not in ("RS256", "ES256", "none", "HS256"):
            raise ControlError(400, "alg must be RS256, ES256, none or HS256")
        which = request.get("key", "current")
        if which not in ("current", "retired", "unknown"):
            raise ControlError(400, "key must be current, retired or unknown")
        ttl = request.get("ttl", 300)
        nbf_offset = request.get("nbf_offset", 0)
        for name, value in (("ttl", ttl), ("nbf_offset", nbf_offset)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ControlError(400, "%s must be a number of seconds" % name)
        tamper = request.get("tamper", False)
        if not isinstance(tamper, bool):
            raise ControlError(400, "tamper must be true or false")
        if "kid" in request and request["kid"] is not None and not isinstance(request["kid"], str):
            raise ControlError(400, "kid must be a string or null")

        with self.lock:
            if which == "current":
                generation = self.current
            elif which == "retired":
                if self.previous is None:
                    raise ControlError(409, "no retired key: POST /-/rotate first")
                generation = self.previous
            else:
                generation = self.unknown

        now = int(time.time())
        payload = {
            "iss": self.url(base),
            "iat": now,
            "nbf": now + int(nbf_offset),
            "exp": now + int(ttl),
            "jti": uuid.uuid4().hex,
        }
        payload.update(claims)
        payload = {name: value for name, value in payload.items() if value is not None}

        if alg == "none":
            header = {"alg": "none", "typ": "JWT"}
            if isinstance(request.get("kid"), str):
                header["kid"] = request["kid"]
            key = None
        else:
            key = generation.keys["RS256" if alg == "HS256" else alg]
            header = {"alg": alg, "kid": key.kid, "typ": "JWT"}
            if "kid" in request:
                if request["kid"] is None:
                    del header["kid"]
                else:
                    header["kid"] = request["kid"]

        payload_bytes = compact_json(payload)
        signing_input = (b64url(compact_json(header)) + "." + b64url(payload_bytes)).encode("ascii")
        if alg == "none":
            signature = b""
        elif alg == "HS256":
            signature = hmac.new(key.public_pem(), signing_input, hashlib.sha256).digest()
        else:
            signature = key.sign(signing_input)
        encoded_header, encoded_payload = signing_input.decode("ascii").split(".")
        if tamper:
            encoded_payload = tampered(payload, payload_bytes, encoded_payload)
        token = "%s.%s.%s" % (encoded_header, encoded_payload, b64url(signature))
        return {"token": token, "header": header, "claims": payload}


def tampered(payload, payload_bytes, encoded_payload):
    """The encoded payload with one character changed after signing."""
    jti = payload.get("jti")
    if isinstance(jti, str):
        needle = b'"jti":' + compact_json(jti)
        start = payload_bytes.find(needle)
        if start >= 0:
            value_start = start + len(b'"jti":') + 1
            value_end = start + len(needle) - 1
            for i in range(value_end - 1, value_start - 1, -1):
                c = payload_bytes[i:i + 1]
                if c.isalnum():
                    flipped = b"1" if c == b"0" else (b"0" if c.isdigit() else c.swapcase())
                    if flipped == c:  # cannot happen for ASCII alphanumerics
                        continue
                    changed = payload_bytes[:i] + flipped + payload_bytes[i + 1:]
                    return b64url(changed)
    # No usable jti: change a character in the middle of the encoded form.
    i = len(encoded_payload) // 2
    c = encoded_payload[i]
    return encoded_payload[:i] + ("B" if c == "A" else "A") + encoded_payload[i + 1:]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "oidc-issuer/1"
    disable_nagle_algorithm = True

    def log_message(self, fmt, *args):
        if self.server.verbose:
            sys.stderr.write("oidc_issuer: %s\n" % (fmt % args))

    def reply(self, status, obj, extra_headers=()):
        body = json.dumps(obj).encode("utf-8") + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra_headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def read_json(self):
        if not self.body.strip():
            return {}
        try:
            return json.loads(self.body)
        except ValueError as e:
            raise ControlError(400, "the body is not JSON: %s" % e)

    def route(self):
        """(issuer, rest of the path) for this request, or (None, path)."""
        path = urlsplit(self.path).path
        issuers = self.server.issuers
        if path.startswith("/-/"):
            return issuers[0], path
        for suffix in (DISCOVERY, JWKS):
            if path.endswith(suffix):
                issuer = self.server.by_path.get(path[: -len(suffix)])
                if issuer is not None:
                    return issuer, suffix
        marker = path.find("/-/")
        if marker > 0:
            issuer = self.server.by_path.get(path[:marker])
            if issuer is not None:
                return issuer, path[marker:]
        return None, path

    def do_GET(self):
        self.handle_request()

    def do_HEAD(self):
        self.handle_request()

    def do_POST(self):
        self.handle_request()

    def handle_request(self):
        # Read any body first, so that a connection kept alive stays in step
        # whatever the answer.
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length > 0 else b""
        try:
            issuer, rest = self.route()
            if issuer is None:
                raise ControlError(404, "not found")
            if rest in (DISCOVERY, JWKS):
                if self.command not in ("GET", "HEAD"):
                    raise ControlError(405, "method not allowed")
                return self.oidc(issuer, rest)
            return self.control(issuer, rest)
        except ControlError as e:
            self.reply(e.status, {"error": e.message})

    def oidc(self, issuer, rest):
        with issuer.lock:
            if rest == DISCOVERY:
                issuer.discovery_requests += 1
            else:
                issuer.jwks_requests += 1
            status, delay = issuer.fail_status, issuer.fail_delay
            if issuer.fail_only not in (None, rest):
                status, delay = 0, 0.0
        if delay:
            time.sleep(delay)
        if status:
            return self.reply(status, {"error": "injected failure"})
        if rest == DISCOVERY:
            return self.reply(200, issuer.discovery(self.server.base))
        return self.reply(200, issuer.jwks())

    def control(self, issuer, rest):
        if rest == "/-/stats" and self.command in ("GET", "HEAD"):
            with issuer.lock:
                stats = {"jwks_requests": issuer.jwks_requests,
                         "discovery_requests": issuer.discovery_requests}
            return self.reply(200, stats)
        if self.command != "POST" or rest not in ("/-/mint", "/-/rotate", "/-/fail", "/-/discovery"):
            raise ControlError(404, "no such control endpoint: %s %s" % (self.command, rest))
        body = self.read_json()
        if rest == "/-/mint":
            return self.reply(200, issuer.mint(self.server.base, body))
        if rest == "/-/rotate":
            return self.reply(200, issuer.rotate())
        if not isinstance(body, dict):
            raise ControlError(400, "the body must be a JSON object")
        if rest == "/-/discovery":
            jwks_uri = body.get("jwks_uri")
            if jwks_uri is not None and not isinstance(jwks_uri, str):
                raise ControlError(400, "jwks_uri must be a string or null")
            with issuer.lock:
                issuer.jwks_uri = jwks_uri
            return self.reply(200, {"jwks_uri": jwks_uri})
        status = body.get("status", 0)
        delay = body.get("delay", 0)
        endpoints = {"jwks": JWKS, "discovery": DISCOVERY}
        only = body.get("only")
        if only is not None and (not isinstance(only, str) or only not in endpoints):
            raise ControlError(400, "only must be jwks or discovery")
        only = endpoints.get(only)
        if (isinstance(status, bool) or not isinstance(status, int)
                or not (status == 0 or 100 <= status <= 599)):
            raise ControlError(400, "status must be 0 (no failure) or an HTTP status")
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or delay < 0:
            raise ControlError(400, "delay must be a number of seconds >= 0")
        with issuer.lock:
            issuer.fail_status, issuer.fail_delay, issuer.fail_only = status, float(delay), only
        return self.reply(200, {"status": status, "delay": float(delay), "only": body.get("only")})


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port, paths, verbose):
        super().__init__(("127.0.0.1", port), Handler)
        self.base = "http://127.0.0.1:%d" % self.server_address[1]
        self.issuers = [Issuer(path) for path in paths]
        self.by_path = {issuer.path: issuer for issuer in self.issuers}
        self.verbose = verbose


def issuer_path(text):
    path = "/" + text.strip("/") if text.strip("/") else ""
    if "/-/" in path + "/" or "?" in path or "#" in path:
        raise argparse.ArgumentTypeError("an issuer path cannot contain /-/, ? or #")
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="0 = any free port")
    parser.add_argument("--path", type=issuer_path, action="append", default=[],
                        help="issuer path after the base URL, e.g. /gitlab (repeatable: one issuer each)")
    parser.add_argument("--exit-with-stdin", action="store_true",
                        help="also exit when standard input closes")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)
    paths = args.path or [""]
    if len(set(paths)) != len(paths):
        parser.error("--path values must differ")

    server = Server(args.port, paths, args.verbose)
    print("listening on %s" % server.base, flush=True)

    if args.exit_with_stdin:
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
