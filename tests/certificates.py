"""Self-signed serving certificates for loopback tests, made with the real `openssl`."""

from __future__ import annotations

import subprocess
from pathlib import Path


def self_signed(cert: Path, key: Path, *, name: str = "127.0.0.1", ec: bool = False) -> None:
    """Write a self-signed certificate for 127.0.0.1 (its own CA, CN `name`) and its key (PEM);
    RSA 2048, or an EC P-256 key with `ec`."""
    algorithm = ("ec", "-pkeyopt", "ec_paramgen_curve:prime256v1") if ec else ("rsa:2048",)
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", *algorithm, "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", f"/CN={name}"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
