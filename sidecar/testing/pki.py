"""A throwaway PKI for TLS / mTLS tests, made with the `openssl` command."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

OPENSSL = shutil.which("openssl")
_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _openssl(*args: str, cwd: Path) -> None:
    if OPENSSL is None:
        raise RuntimeError("openssl is not installed")
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True)


def _issue(cwd: Path, name: str, subject: str, ext: str) -> None:
    _openssl(
        "req", *_EC, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=cwd
    )
    (cwd / f"{name}.ext").write_text(ext)
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext",
        cwd=cwd,
    )  # fmt: skip


def make_pki(folder: Path) -> Path:
    """ca.pem/ca.key, server.pem/server.key (localhost, 127.0.0.1), client.pem/client.key."""
    folder.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req", "-x509", *_EC, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
        "-subj", "/CN=test-ca", cwd=folder,
    )  # fmt: skip
    _issue(folder, "server", "/CN=localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _issue(folder, "client", "/CN=operator-alice", "extendedKeyUsage=clientAuth\n")
    return folder
