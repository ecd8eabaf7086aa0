"""A web config file in exporter-toolkit's format: a fresh self-signed certificate for 127.0.0.1
(written by the real `openssl`) and one basic-auth user with a bcrypt hash."""

from __future__ import annotations

import base64
import ssl
import subprocess
from pathlib import Path

import bcrypt


def write_web_config(tmp: Path, user: str = "prometheus", password: str = "s3cret pass") -> Path:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(tmp / "server.key"),
                    "-out", str(tmp / "server.crt")], check=True, capture_output=True)
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode().replace("$2b$", "$2y$", 1)
    path = tmp / "web.yml"
    path.write_text("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
                    f"basic_auth_users:\n  {user}: '{hashed}'\n")
    return path


def client_context(tmp: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(tmp / "server.crt"))


def basic(user: str = "prometheus", password: str = "s3cret pass") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
