"""A minimal Kubernetes REST client on the standard library, for the sandbox's stand-ins.

The stand-ins (injector, egress proxy, traffic simulator) run before and beside the project's
venv, so they talk to the real kube-apiserver with client certificates over plain HTTPS.
"""

from __future__ import annotations

import http.client
import json
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit


class ApiError(RuntimeError):
    """The apiserver answered with a non-2xx status."""

    def __init__(self, status: int, method: str, path: str, body: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {body[:500]}")
        self.status = status


@dataclass(frozen=True)
class KubeApi:
    """HTTPS client for one apiserver, authenticated by a client certificate."""

    server: str
    ca_file: str
    cert_file: str
    key_file: str
    timeout: float = 10.0

    def _connection(self) -> http.client.HTTPSConnection:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        ctx.load_cert_chain(self.cert_file, self.key_file)
        url = urlsplit(self.server)
        return http.client.HTTPSConnection(
            url.hostname or "127.0.0.1", url.port or 443, context=ctx, timeout=self.timeout
        )

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        query: dict[str, str] | None = None,
    ) -> Any:
        """Send one request and return the decoded JSON answer (None for an empty body)."""
        if query:
            path = f"{path}?{urlencode(query)}"
        data = None if body is None else json.dumps(body).encode()
        conn = self._connection()
        try:
            conn.request(method, path, body=data, headers={"Content-Type": content_type})
            resp = conn.getresponse()
            raw = resp.read().decode()
        finally:
            conn.close()
        if resp.status >= 300:
            raise ApiError(resp.status, method, path, raw)
        return json.loads(raw) if raw else None

    def get(self, path: str, **query: str) -> Any:
        return self.request("GET", path, query=query or None)

    def merge_patch(self, path: str, patch: dict[str, Any]) -> Any:
        return self.request("PATCH", path, patch, content_type="application/merge-patch+json")

    def json_patch(self, path: str, ops: list[dict[str, Any]]) -> Any:
        return self.request("PATCH", path, ops, content_type="application/json-patch+json")


def from_files(server: str, pki_dir: str, user: str = "admin") -> KubeApi:
    """Client for the sandbox's apiserver using the certificates the sandbox wrote."""
    return KubeApi(
        server=server,
        ca_file=f"{pki_dir}/ca.crt",
        cert_file=f"{pki_dir}/{user}.crt",
        key_file=f"{pki_dir}/{user}.key",
    )
