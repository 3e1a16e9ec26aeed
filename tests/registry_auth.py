"""Authentication and TLS for test registries: a CA and a loopback server certificate, an
htpasswd file, and a small token server signing RS256 JWTs that Distribution 2.8 accepts.

The token server grants what a ``grants`` table allows: user -> {resource name -> actions}, where
a resource is a repository name or ``"catalog"`` (``{"type": "registry", "name": "catalog"}``).
It answers 401 to unknown users and wrong passwords and counts the tokens it issued; it can
issue tokens the registry refuses although their answer promises them a long life (``valid_for``).
"""

from __future__ import annotations

import base64
import datetime
import json
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Address
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import bcrypt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from tests.services import LOOPBACK

SERVICE = "test-registry"
ISSUER = "test-token-issuer"
TOKEN_LIFETIME = 300


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def _certificate(subject: str, key, issuer_name: str, issuer_key, *, ca: bool,
                 san: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(IPv4Address(LOOPBACK))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass(frozen=True)
class TLSFiles:
    ca: Path
    """The test CA's certificate (PEM): what clients trust."""
    certificate: Path
    key: Path
    cert_dir: Path
    """A directory holding ``ca.crt``, as skopeo's ``--cert-dir`` wants it."""


def make_tls(directory: Path) -> TLSFiles:
    """A fresh CA and a server certificate for ``127.0.0.1`` signed by it, written in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, server_key = _key(), _key()
    ca = _certificate("replicator test CA", ca_key, "replicator test CA", ca_key, ca=True)
    server = _certificate(LOOPBACK, server_key, "replicator test CA", ca_key, ca=False, san=True)
    files = TLSFiles(directory / "ca.pem", directory / "server.crt", directory / "server.key",
                     directory / "certs")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.certificate.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(_pem_key(server_key))
    files.cert_dir.mkdir(exist_ok=True)
    (files.cert_dir / "ca.crt").write_bytes(files.ca.read_bytes())
    return files


def tls_section(files: TLSFiles) -> dict:
    """The registry's ``http.tls`` block."""
    return {"certificate": str(files.certificate), "key": str(files.key)}


def write_htpasswd(path: Path, users: dict[str, str]) -> dict:
    """An htpasswd file of bcrypt hashes (cost 4: the registry checks one per request);
    returns the registry's ``auth`` block for it."""
    lines = [f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()}"
             for user, password in users.items()]
    path.write_text("\n".join(lines) + "\n")
    return {"htpasswd": {"realm": "test-realm", "path": str(path)}}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """See the module docstring. ``auth_section()`` is the registry's ``auth`` block."""

    def __init__(self, directory: Path, users: dict[str, str],
                 grants: dict[str, dict[str, list[str]]]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.users, self.grants = users, grants
        self._key = _key()
        certificate = _certificate("signer", self._key, "signer", self._key, ca=False)
        self._x5c = base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode()
        self.bundle = directory / "token.crt"
        self.bundle.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        self.issued = 0
        self.refused = 0
        self.valid_for = TOKEN_LIFETIME
        """Seconds from now to a token's ``exp`` (negative: issued already expired, past the
        registry's minute of leeway); ``expires_in`` always says ``TOKEN_LIFETIME``."""
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                status, body = server._answer(self.path, self.headers.get("Authorization", ""))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.url = f"http://{LOOPBACK}:{self._server.server_address[1]}/token"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="token-server")

    def auth_section(self) -> dict:
        return {"token": {"realm": self.url, "service": SERVICE, "issuer": ISSUER,
                          "rootcertbundle": str(self.bundle)}}

    def start(self) -> TokenServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> TokenServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _user(self, authorization: str) -> str | None:
        if not authorization.startswith("Basic "):
            return ""
        user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
        return user if self.users.get(user) == password else None

    def _answer(self, path: str, authorization: str) -> tuple[int, dict]:
        user = self._user(authorization)
        if user is None:
            with self._lock:
                self.refused += 1
            return 401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]}
        query = parse_qsl(urlsplit(path).query)
        allowed = self.grants.get(user, {})
        access = []
        for name, value in query:
            if name != "scope":
                continue
            kind, _, rest = value.partition(":")
            resource, _, actions = rest.rpartition(":")
            granted = [action for action in actions.split(",")
                       if action in allowed.get(resource, ()) or "*" in allowed.get(resource, ())]
            if granted:
                access.append({"type": kind, "name": resource, "actions": granted})
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": user, "aud": SERVICE, "exp": now + self.valid_for,
                  "nbf": now - 10, "iat": now, "jti": uuid.uuid4().hex, "access": access}
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        token = f"{signing_input}.{_b64url(signature)}"
        with self._lock:
            self.issued += 1
        return 200, {"token": token, "access_token": token, "expires_in": TOKEN_LIFETIME,
                     "issued_at": datetime.datetime.now(datetime.timezone.utc).isoformat()}
