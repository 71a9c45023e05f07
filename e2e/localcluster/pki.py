"""Credentials for one local cluster: a CA, the apiserver's serving certificate, the
service-account signing key, static bearer tokens for the admin and each component, and the
aggregation layer's front-proxy CA and client certificate.

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
FRONT_PROXY_CLIENT = "front-proxy-client"
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
    def front_proxy_ca_cert(self) -> Path:
        return self.directory / "front-proxy-ca.crt"

    @property
    def front_proxy_client_cert(self) -> Path:
        return self.directory / f"{FRONT_PROXY_CLIENT}.crt"

    @property
    def front_proxy_client_key(self) -> Path:
        return self.directory / f"{FRONT_PROXY_CLIENT}.key"

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


def _new_ca(d: Path, name: str, common_name: str) -> None:
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "365",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.crt",
        "-subj",
        f"/CN={common_name}",
        # Strict verifiers (Python 3.13's default SSL context among them) refuse a CA without
        # a key usage extension.
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        cwd=d,
    )


# Every issued certificate names its issuer's key and its own use, as strict verifiers require.
LEAF_EXTENSIONS = (
    "basicConstraints=critical,CA:FALSE",
    "keyUsage=critical,digitalSignature,keyEncipherment",
    "subjectKeyIdentifier=hash",
    "authorityKeyIdentifier=keyid,issuer",
)


def _issue(d: Path, name: str, common_name: str, ca: str, extensions: Sequence[str]) -> None:
    """<name>.crt/.key signed by <ca>.crt, with the given x509v3 extension lines."""
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        "-subj",
        f"/CN={common_name}",
        cwd=d,
    )
    lines = [*LEAF_EXTENSIONS, *extensions]
    (d / f"{name}.ext").write_text("".join(f"{line}\n" for line in lines))
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        f"{ca}.crt",
        "-CAkey",
        f"{ca}.key",
        "-CAcreateserial",
        "-days",
        "365",
        "-out",
        f"{name}.crt",
        "-extfile",
        f"{name}.ext",
        cwd=d,
    )


def issue_serving_cert(creds: Credentials, name: str, sans: Sequence[str]) -> tuple[Path, Path]:
    """A serving certificate signed by the cluster CA (for an extension apiserver); returns
    (certificate, key)."""
    _issue(creds.directory, name, name, "ca", ["subjectAltName=" + ",".join(sans)])
    return creds.directory / f"{name}.crt", creds.directory / f"{name}.key"


def generate(directory: Path, extra_ips: Sequence[str] = ()) -> Credentials:
    """extra_ips: addresses besides loopback the apiserver is reached at (a real node's uplink)."""
    directory.mkdir(parents=True, exist_ok=True)
    d = directory
    _new_ca(d, "ca", "marfleet-local-ca")
    sans = [*SANS, *(f"IP:{ip}" for ip in extra_ips)]
    _issue(d, "apiserver", "kube-apiserver", "ca", ["subjectAltName=" + ",".join(sans)])
    # the aggregation layer: the apiserver proxies to extension apiservers with this client
    # certificate, and they trust the X-Remote-* headers only from it
    _new_ca(d, "front-proxy-ca", "marfleet-front-proxy-ca")
    _issue(
        d, FRONT_PROXY_CLIENT, FRONT_PROXY_CLIENT, "front-proxy-ca", ["extendedKeyUsage=clientAuth"]
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
