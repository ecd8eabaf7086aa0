"""`--web.config.file`: TLS and basic auth in the Prometheus exporter-toolkit's format, so the file
an operator already writes for node_exporter works for both taskmedic processes.

    tls_server_config:
      cert_file: server.crt          # relative paths are relative to this file, as in exporter-toolkit
      key_file: server.key
    basic_auth_users:
      prometheus: $2y$10$...         # bcrypt hashes (htpasswd -nBC 10 "" | tr -d ':\\n')

Passwords are checked with bcrypt off the event loop; a pair that checked once is remembered (by
a SHA-256 of user, password and hash, never the password itself) so a scrape every 15 s does not
pay bcrypt's cost each time — exporter-toolkit caches the same way.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Literal

import bcrypt
from aiohttp import web
from aiohttp.typedefs import Middleware
from pydantic import AfterValidator, Field

from taskmedic.config.loader import ConfigError, read_yaml, validate
from taskmedic.config.model import Model

_BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")


def _bcrypt_hash(value: str) -> str:
    if not value.startswith(_BCRYPT_PREFIXES) or len(value) != 60:
        raise ValueError("expected a bcrypt hash ($2y$..., 60 characters), e.g. from `htpasswd -nBC 10 user`")
    return value


class TlsServerConfig(Model):
    cert_file: str
    key_file: str
    client_auth_type: Literal["NoClientCert", "RequireAndVerifyClientCert", "VerifyClientCertIfGiven"] = \
        "NoClientCert"
    client_ca_file: str | None = None
    min_version: Literal["TLS12", "TLS13"] = "TLS12"


class HttpServerConfig(Model):
    headers: dict[str, str] = Field(default_factory=dict)  # added to every response
    http2: bool = True  # accepted for compatibility; aiohttp serves HTTP/1.1


class WebConfig(Model):
    tls_server_config: TlsServerConfig | None = None
    http_server_config: HttpServerConfig = HttpServerConfig()
    basic_auth_users: dict[str, Annotated[str, AfterValidator(_bcrypt_hash)]] = Field(default_factory=dict)


def load_web_config(path: str) -> tuple[WebConfig, Path]:
    doc = read_yaml(path)
    if doc.data is None:
        doc.data = {}
    if not isinstance(doc.data, dict):
        raise ConfigError([f"{doc.file}: expected a mapping at the top level"])
    return validate(WebConfig, doc), Path(path).resolve().parent


def ssl_context(tls: TlsServerConfig, base: Path) -> ssl.SSLContext:
    """A server context from the files named in `tls_server_config`; unreadable files are a ConfigError."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if tls.min_version == "TLS13" else ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(base / tls.cert_file, base / tls.key_file)
        if tls.client_auth_type != "NoClientCert":
            if tls.client_ca_file is None:
                raise ConfigError([f"tls_server_config.client_auth_type {tls.client_auth_type} needs client_ca_file"])
            ctx.load_verify_locations(base / tls.client_ca_file)
            ctx.verify_mode = (ssl.CERT_REQUIRED if tls.client_auth_type == "RequireAndVerifyClientCert"
                               else ssl.CERT_OPTIONAL)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError([f"tls_server_config: cannot load the certificate or key: {e}"]) from None
    return ctx


class BasicAuthUsers:
    def __init__(self, users: dict[str, str]) -> None:
        self._users = {u: h.encode() for u, h in users.items()}
        self._verified: set[bytes] = set()

    def _key(self, user: str, password: bytes, hashed: bytes) -> bytes:
        return hashlib.sha256(user.encode() + b"\0" + password + b"\0" + hashed).digest()

    async def allows(self, authorization: str | None) -> bool:
        scheme, _, value = (authorization or "").strip().partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return False
        hashed = self._users.get(user)
        if not sep or hashed is None:
            return False
        key = self._key(user, password.encode(), hashed)
        if any(hmac.compare_digest(key, seen) for seen in self._verified):
            return True
        if not await asyncio.to_thread(bcrypt.checkpw, password.encode(), hashed):
            return False
        self._verified.add(key)
        return True


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
WEB_USER = "taskmedic.web_user"  # request key: set when the web config's basic auth admitted the request


# An app whose own credentials may stand in for the web config's users (the remediator's webhook auth).
Credentials = Callable[[web.Request], bool]
OWN_CREDENTIALS: web.AppKey[Credentials] = web.AppKey("own_credentials")


def middleware(config: WebConfig, also_allowed: Credentials | None = None) -> Middleware:
    """Every request needs one of `basic_auth_users` (when any are configured) — or, for the
    remediator, its own webhook credentials (`also_allowed`), so Alertmanager's bearer token
    keeps working behind a web config."""
    users = BasicAuthUsers(config.basic_auth_users)
    headers = config.http_server_config.headers

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if config.basic_auth_users:
            if await users.allows(request.headers.get("Authorization")):
                request[WEB_USER] = True
            elif also_allowed is None or not also_allowed(request):
                return web.json_response({"error": "unauthorized"}, status=401,
                                         headers={"WWW-Authenticate": 'Basic realm="taskmedic"'})
        response = await handler(request)
        response.headers.update(headers)
        return response

    return guard
