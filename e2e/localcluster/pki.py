"""Credentials for one local cluster: a CA, the apiserver's serving certificate, the
service-account signing key and static bearer tokens for the admin and each component.

openssl does the cryptography so the launcher needs nothing beyond the standard library.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SERVICE_CLUSTER_IP = "10.96.0.1"
SANS = [
    "IP:127.0.0.1",
    f"IP:{SERVICE_CLUSTER_IP}",
    "DNS:localhost",
    "DNS:kubernetes",
    "DNS:kubernetes.default",
    "DNS:kubernetes.default.svc",
    "DNS:kubernetes.default.svc.cluster.local",
]
# user name -> groups; the component users are the ones Kubernetes' bootstrap RBAC knows.
USERS = {
    "marfleet-admin": "system:masters",
    "system:kube-controller-manager": "",
    "system:kube-scheduler": "",
    "kwok": "system:masters",
    # the real node's kubelet (Node authorizer) and kube-proxy (bootstrap system:node-proxier)
    "system:node:real-node": "system:nodes",
    "system:kube-proxy": "",
}


@dataclass(frozen=True)
class Credentials:
    directory: Path
    tokens: dict[str, str]

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def serving_cert(self) -> Path:
        return self.directory / "apiserver.crt"

    @property
    def serving_key(self) -> Path:
        return self.directory / "apiserver.key"

    @property
    def sa_key(self) -> Path:
        return self.directory / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.directory / "sa.pub"

    @property
    def token_file(self) -> Path:
        return self.directory / "tokens.csv"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def generate(directory: Path, extra_ips: Sequence[str] = ()) -> Credentials:
    """extra_ips: addresses besides loopback the apiserver is reached at (a real node's uplink)."""
    directory.mkdir(parents=True, exist_ok=True)
    d = directory
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "365",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-subj",
        "/CN=marfleet-local-ca",
        cwd=d,
    )
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "apiserver.key",
        "-out",
        "apiserver.csr",
        "-subj",
        "/CN=kube-apiserver",
        cwd=d,
    )
    sans = [*SANS, *(f"IP:{ip}" for ip in extra_ips)]
    (d / "san.cnf").write_text("subjectAltName=" + ",".join(sans) + "\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        "apiserver.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "365",
        "-out",
        "apiserver.crt",
        "-extfile",
        "san.cnf",
        cwd=d,
    )
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=d)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)
    tokens = {user: secrets.token_hex(24) for user in USERS}
    rows = [f"{tokens[u]},{u},{u}" + (f',"{g}"' if g else "") for u, g in USERS.items()]
    (d / "tokens.csv").write_text("\n".join(rows) + "\n")
    (d / "tokens.csv").chmod(0o600)
    return Credentials(d, tokens)


def load(directory: Path) -> Credentials:
    tokens = {}
    for row in (directory / "tokens.csv").read_text().splitlines():
        token, user = row.split(",")[:2]
        tokens[user] = token
    return Credentials(directory, tokens)
