"""Test certificates made with ``openssl`` at test time: a CA, a broker
certificate for 127.0.0.1 and localhost, a client certificate for mutual TLS,
and a second CA that nobody trusts."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

DAYS = "2"


@dataclass(frozen=True)
class Pki:
    """Paths of the PEM files (keys unencrypted, PKCS#8)."""

    ca: Path
    broker_keystore: Path  # broker key + certificate chain, as Kafka's PEM keystore wants
    client_cert: Path
    client_key: Path
    other_ca: Path


def openssl() -> str | None:
    """The openssl binary, if installed."""
    return shutil.which("openssl")


def _run(*args: str, cwd: Path) -> None:
    subprocess.run([openssl() or "openssl", *args], cwd=cwd, check=True, capture_output=True)


def _ca(name: str, cwd: Path) -> None:
    _run(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", DAYS,
        "-keyout", f"{name}.key", "-out", f"{name}.crt", "-subj", f"/CN=netfraud test {name}",
        cwd=cwd,
    )  # fmt: skip


def _leaf(name: str, subject: str, extensions: str, cwd: Path) -> None:
    (cwd / f"{name}.ext").write_text(extensions)
    _run(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
        "-out", f"{name}.csr", "-subj", subject,
        cwd=cwd,
    )  # fmt: skip
    _run(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", DAYS, "-out", f"{name}.crt", "-extfile", f"{name}.ext",
        cwd=cwd,
    )  # fmt: skip


def make_pki(root: Path) -> Pki:
    """Write a CA, broker and client certificates and an unrelated CA under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    _ca("ca", root)
    _ca("other", root)
    _leaf(
        "broker",
        "/CN=localhost",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
        root,
    )
    _leaf("client", "/O=netfraud tests/CN=netfraud", "extendedKeyUsage=clientAuth\n", root)
    keystore = root / "broker.pem"
    keystore.write_text(
        (root / "broker.key").read_text()
        + (root / "broker.crt").read_text()
        + (root / "ca.crt").read_text()
    )
    return Pki(
        root / "ca.crt", keystore, root / "client.crt", root / "client.key", root / "other.crt"
    )
