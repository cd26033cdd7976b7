"""The sandbox's certificates, made with the openssl CLI: a CA, the apiserver's serving
certificate, an admin client certificate and the service-account signing key."""

from __future__ import annotations

import subprocess
from pathlib import Path

APISERVER_SANS = (
    "IP:127.0.0.1",
    "IP:10.96.0.1",
    "DNS:localhost",
    "DNS:kubernetes",
    "DNS:kubernetes.default",
    "DNS:kubernetes.default.svc",
    "DNS:kubernetes.default.svc.cluster.local",
)


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _key(path: Path) -> None:
    if not path.exists():
        _openssl("genrsa", "-out", str(path), "2048")
        path.chmod(0o600)


def signed_cert(
    pki: Path, name: str, subject: str, sans: tuple[str, ...] = (), client: bool = False
) -> None:
    """Write `name.key`/`name.crt` signed by the sandbox CA, unless they exist."""
    key, crt = pki / f"{name}.key", pki / f"{name}.crt"
    if crt.exists():
        return
    _key(key)
    csr = pki / f"{name}.csr"
    _openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr))
    ext = pki / f"{name}.ext"
    usage = "clientAuth" if client else "serverAuth"
    lines = [
        "basicConstraints=CA:FALSE",
        "keyUsage=digitalSignature,keyEncipherment",
        f"extendedKeyUsage={usage}",
    ]
    if sans:
        lines.append("subjectAltName=" + ",".join(sans))
    ext.write_text("\n".join(lines) + "\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(pki / "ca.crt"),
        "-CAkey",
        str(pki / "ca.key"),
        "-CAcreateserial",
        "-days",
        "3650",
        "-sha256",
        "-extfile",
        str(ext),
        "-out",
        str(crt),
    )
    csr.unlink()
    ext.unlink()


def ensure_pki(pki: Path) -> None:
    """Create every certificate and key the cluster needs; existing files are kept."""
    pki.mkdir(parents=True, exist_ok=True)
    _key(pki / "ca.key")
    if not (pki / "ca.crt").exists():
        _openssl(
            "req",
            "-x509",
            "-new",
            "-key",
            str(pki / "ca.key"),
            "-subj",
            "/CN=istio-canary-sandbox-ca",
            "-days",
            "3650",
            "-sha256",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
            "-out",
            str(pki / "ca.crt"),
        )
    signed_cert(pki, "apiserver", "/CN=kube-apiserver", APISERVER_SANS)
    signed_cert(pki, "admin", "/O=system:masters/CN=admin", client=True)
    # The nodes' kubelet endpoint (sandbox/runtime.py serves pod logs there).
    signed_cert(pki, "kubelet", "/CN=kwok-kubelet", ("IP:127.0.0.1",))
    _key(pki / "sa.key")
    if not (pki / "sa.pub").exists():
        _openssl("rsa", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub"))
