"""Stand-in for istiod's sidecar-injection endpoint, for the sandbox (no containers run).

One stdlib-only process replaces three pieces of the real system:
- istiod's webhook server (port 15017 behind Service istiod-REV:443): one TLS server per
  revision on 127.0.0.1, answering /inject* with the JSON patch istiod would produce for what
  the project checks (istio-proxy container and image, sidecar.istio.io/status, labels) and
  /validate* with allowed=true (Istio's config validation webhook).
- istiod's webhook controller: it patches the sandbox CA into the caBundle of every
  Mutating/ValidatingWebhookConfiguration webhook that calls Service istio-system/istiod-REV.
- the cluster network between the apiserver and istiod: an HTTP CONNECT proxy on a unix socket
  (the apiserver's egress selector "cluster") that maps a Service's ClusterIP or DNS name to
  the local TLS server of its revision. Nothing is ever dialled except 127.0.0.1.

Revisions come from the ConfigMaps istio-system/istio-sidecar-injector-REV that
`istioctl install --set revision=REV` writes; their `values` key gives hub, tag and image.

Usage (from the repo root):
  python3 -m sandbox.injector --server https://127.0.0.1:16443 --pki DIR --socket PATH \
      --workdir DIR
The socket file appears only once the first reconcile succeeded: it is the ready signal.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import ipaddress
import json
import os
import re
import secrets
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from sandbox.kubeapi import ApiError, KubeApi, from_files

NAMESPACE = "istio-system"
CONFIGMAP_PREFIX = "istio-sidecar-injector-"
PROXY_CONTAINER = "istio-proxy"
ENVOY_VOLUME = "istio-envoy"
STATUS_ANNOTATION = "sidecar.istio.io/status"
INJECT_KEY = "sidecar.istio.io/inject"
RECONCILE_INTERVAL = 1.0
HANDSHAKE_TIMEOUT = 10.0
# Longer than the apiserver's 90 s idle-connection timeout, so the client always closes an
# idle keep-alive connection first: a server-side close racing a reused connection would fail
# a POST that Go does not retry, and with failurePolicy Fail the pod creation with it.
IDLE_TIMEOUT = 600.0
MAX_BODY = 16 * 1024 * 1024
MAX_CONNECT_HEAD = 8192
ADMISSION_API = "/apis/admissionregistration.k8s.io/v1"
WEBHOOK_KINDS = {
    "MutatingWebhookConfiguration": f"{ADMISSION_API}/mutatingwebhookconfigurations",
    "ValidatingWebhookConfiguration": f"{ADMISSION_API}/validatingwebhookconfigurations",
}
ADMISSION_VERSIONS = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")
# Revision names end up in file names and certificate subjects: accept DNS labels only.
REVISION_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# Image variants Istio publishes; a tag already carrying one gets it replaced (as istiod does).
KNOWN_VARIANTS = ("distroless", "debug")

# What a call through KubeApi can raise besides bugs: answers, network, truncated bodies.
API_ERRORS = (ApiError, OSError, http.client.HTTPException, ValueError)

_log_lock = threading.Lock()


# ---- logging ---------------------------------------------------------------------------


def format_log(fields: dict[str, Any]) -> str:
    """One logfmt line; values with spaces, quotes or '=' are JSON-quoted to stay parseable."""
    parts = []
    for key, value in fields.items():
        if value is None:
            continue
        text = str(value)
        if text == "" or any(c in text for c in ' "=\t\n'):
            text = json.dumps(text)
        parts.append(f"{key}={text}")
    return " ".join(parts)


def log(action: str, revision: str | None = None, **fields: Any) -> None:
    """Print one structured line to stdout and flush, so a supervisor sees it at once."""
    ts = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    line = format_log({"ts": ts, "revision": revision, "action": action, **fields})
    with _log_lock:
        print(line, flush=True)


# ---- pure parts --------------------------------------------------------------------------


def revision_of_configmap(name: str) -> str | None:
    """The revision an injector ConfigMap belongs to, or None for any other ConfigMap."""
    if not name.startswith(CONFIGMAP_PREFIX):
        return None
    rev = name[len(CONFIGMAP_PREFIX) :]
    return rev if REVISION_RE.match(rev) else None


def service_dns_names(rev: str) -> list[str]:
    """The names the apiserver may use for istiod-REV: the certificate's SANs."""
    base = f"istiod-{rev}.{NAMESPACE}"
    return [f"{base}.svc", f"{base}.svc.cluster.local", base]


def proxy_image(values: dict[str, Any]) -> str:
    """The istio-proxy image for a revision's values, built the way istiod's ProxyImage does."""
    glob = values.get("global") or {}
    image = (glob.get("proxy") or {}).get("image") or "proxyv2"
    # The injection template uses an image containing '/' verbatim (a full reference).
    if "/" in image:
        return image
    hub, tag = glob.get("hub"), glob.get("tag")
    if not hub or tag is None or tag == "":
        raise ValueError("values.global.hub and values.global.tag are required")
    tag = str(tag)
    variant = glob.get("variant") or ""
    if variant:
        for known in KNOWN_VARIANTS:
            tag = tag.removesuffix(f"-{known}")
        if variant != "default":
            tag = f"{tag}-{variant}"
    return f"{hub}/{image}:{tag}"


def _normal_host(host: str) -> str:
    """Canonical form of a host, so '[fd00::a]' and 'fd00:0::a' compare equal."""
    host = host.strip().strip("[]").rstrip(".").lower()
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def revision_for_target(host: str, services: list[dict[str, Any]]) -> str | None:
    """The revision whose istiod-REV Service has this ClusterIP or DNS name, else None."""
    wanted = _normal_host(host)
    for svc in services:
        meta = svc.get("metadata") or {}
        name = meta.get("name") or ""
        if meta.get("namespace", NAMESPACE) != NAMESPACE or not name.startswith("istiod-"):
            continue
        rev = name.removeprefix("istiod-")
        spec = svc.get("spec") or {}
        ips = {spec.get("clusterIP"), *(spec.get("clusterIPs") or [])} - {None, "", "None"}
        if wanted in {_normal_host(ip) for ip in ips} or wanted in service_dns_names(rev):
            return rev
    return None


def parse_connect(head: bytes) -> tuple[str, int]:
    """Host and port of an HTTP CONNECT request head; ValueError when it is not one."""
    try:
        line = head.split(b"\r\n", 1)[0].decode("ascii")
    except UnicodeDecodeError as err:
        raise ValueError("request line is not ASCII") from err
    parts = line.split(" ")
    if len(parts) != 3 or parts[0] != "CONNECT" or not parts[2].startswith("HTTP/1."):
        raise ValueError(f"not a CONNECT request: {line[:100]!r}")
    host, sep, port = parts[1].rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"CONNECT target must be host:port: {parts[1][:100]!r}")
    return host.strip("[]"), int(port)


def webhooks_needing_ca(config: dict[str, Any], rev: str, ca_b64: str) -> list[int]:
    """Indexes of the webhooks calling Service istio-system/istiod-REV whose caBundle differs."""
    found = []
    for i, hook in enumerate(config.get("webhooks") or []):
        client = hook.get("clientConfig") or {}
        svc = client.get("service") or {}
        if (
            svc.get("namespace") == NAMESPACE
            and svc.get("name") == f"istiod-{rev}"
            and client.get("caBundle") != ca_b64
        ):
            found.append(i)
    return found


def ca_bundle_patch(
    config: dict[str, Any], indexes: list[int], ca_b64: str
) -> list[dict[str, Any]]:
    """JSON patch setting caBundle on those webhooks; each guarded by a test of the webhook's
    name, so a list reordered since we read it makes the patch fail instead of hitting another."""
    ops: list[dict[str, Any]] = []
    for i in indexes:
        name = config["webhooks"][i].get("name")
        ops.append({"op": "test", "path": f"/webhooks/{i}/name", "value": name})
        ops.append({"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": ca_b64})
    return ops


def pointer(*parts: str | int) -> str:
    """A JSON pointer (RFC 6901): '~' and '/' inside a key become '~0' and '~1'."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def skip_reason(pod: dict[str, Any]) -> str | None:
    """Why istiod would not inject this pod, or None when it would."""
    meta = pod.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    labels = meta.get("labels") or {}
    if STATUS_ANNOTATION in annotations:
        return "already-injected"
    if (pod.get("spec") or {}).get("hostNetwork"):
        return "host-network"
    # As istiod: the label wins over the annotation; empty means the default (inject);
    # only y/yes/true/on opt in explicitly, any other value opts out.
    choice = str(labels.get(INJECT_KEY, annotations.get(INJECT_KEY, "")))
    if choice.lower() not in ("", "y", "yes", "true", "on"):
        return f"{INJECT_KEY}={choice}"
    return None


def workload_name(pod: dict[str, Any]) -> str:
    """The owning workload's name, guessed as istiod does (controller owner, minus the
    ReplicaSet's pod-template-hash), falling back to generateName, then the pod name."""
    meta = pod.get("metadata") or {}
    pod_hash = (meta.get("labels") or {}).get("pod-template-hash")
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller"):
            name = ref.get("name") or ""
            if ref.get("kind") == "ReplicaSet" and pod_hash:
                name = name.removesuffix(f"-{pod_hash}")
            return str(name)
    if meta.get("generateName"):
        name = str(meta["generateName"]).removesuffix("-")
        return name.removesuffix(f"-{pod_hash}") if pod_hash else name
    return str(meta.get("name") or "")


def injected_labels(pod: dict[str, Any]) -> dict[str, str]:
    """The labels istiod's sidecar template sets (canonical service name and revision)."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    name = (
        labels.get("service.istio.io/canonical-name")
        or labels.get("app.kubernetes.io/name")
        or labels.get("app")
        or workload_name(pod)
    )
    revision = (
        labels.get("service.istio.io/canonical-revision")
        or labels.get("app.kubernetes.io/version")
        or labels.get("version")
        or "latest"
    )
    return {
        "security.istio.io/tlsMode": "istio",
        "service.istio.io/canonical-name": name,
        "service.istio.io/canonical-revision": revision,
    }


def sidecar_status(rev: str) -> str:
    """The sidecar.istio.io/status value, byte for byte as istiod's json.Marshal writes it."""
    status = {
        "initContainers": None,
        "containers": [PROXY_CONTAINER],
        "volumes": [ENVOY_VOLUME],
        "imagePullSecrets": None,
        "revision": rev,
    }
    return json.dumps(status, separators=(",", ":"))


def _append(ops: list[dict[str, Any]], parts: tuple[str, ...], current: Any, item: Any) -> None:
    """Append to a list, creating the list when the object has none yet."""
    if isinstance(current, list):
        ops.append({"op": "add", "path": pointer(*parts, "-"), "value": item})
    else:
        ops.append({"op": "add", "path": pointer(*parts), "value": [item]})


def _set_entries(
    ops: list[dict[str, Any]], parts: tuple[str, ...], current: Any, entries: dict[str, str]
) -> None:
    """Set map entries, creating the map when the object has none yet ('add' also replaces)."""
    if isinstance(current, dict):
        ops.extend(
            {"op": "add", "path": pointer(*parts, k), "value": v} for k, v in entries.items()
        )
    else:
        ops.append({"op": "add", "path": pointer(*parts), "value": dict(entries)})


def injection_patch(pod: dict[str, Any], rev: str, image: str) -> list[dict[str, Any]]:
    """The JSON patch istiod's sidecar injection would apply to this pod ([] when skipped)."""
    if skip_reason(pod):
        return []
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    ops: list[dict[str, Any]] = []
    containers = spec.get("containers")
    existing = [i for i, c in enumerate(containers or []) if c.get("name") == PROXY_CONTAINER]
    if existing:
        # Gateway template: the pod brings its own istio-proxy (image "auto"); only the image
        # is filled in. 'add' rather than 'replace' because the image field may be absent.
        ops.append(
            {
                "op": "add",
                "path": pointer("spec", "containers", existing[0], "image"),
                "value": image,
            }
        )
    else:
        container = {
            "name": PROXY_CONTAINER,
            "image": image,
            "args": ["proxy", "sidecar"],
            "volumeMounts": [{"name": ENVOY_VOLUME, "mountPath": "/etc/istio/proxy"}],
        }
        _append(ops, ("spec", "containers"), containers, container)
    volumes = spec.get("volumes")
    if not any(v.get("name") == ENVOY_VOLUME for v in volumes or []):
        # The status annotation lists this volume, and the added container mounts it.
        _append(
            ops,
            ("spec", "volumes"),
            volumes,
            {"name": ENVOY_VOLUME, "emptyDir": {"medium": "Memory"}},
        )
    _set_entries(ops, ("metadata", "labels"), meta.get("labels"), injected_labels(pod))
    annotations = {STATUS_ANNOTATION: sidecar_status(rev), "istio.io/rev": rev}
    _set_entries(ops, ("metadata", "annotations"), meta.get("annotations"), annotations)
    return ops


class HttpError(Exception):
    """A request the webhook cannot answer, with the HTTP status to send."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def admission_reply(
    path: str, raw: bytes, rev: str, image: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The AdmissionReview answer to one webhook call and the fields to log about it.

    Echoes the request's apiVersion: Istio's webhooks list v1beta1 first, and the apiserver
    sends (and expects back) the first version it supports. Raises HttpError otherwise.
    """
    route = path.split("?", 1)[0]
    if not (route.startswith("/inject") or route.startswith("/validate")):
        raise HttpError(404, f"no handler for path {route!r}; expected /inject... or /validate...")
    try:
        review = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise HttpError(400, f"body is not JSON: {err}") from err
    if not isinstance(review, dict) or review.get("kind") != "AdmissionReview":
        raise HttpError(400, "body is not an AdmissionReview")
    version = review.get("apiVersion")
    if version not in ADMISSION_VERSIONS:
        raise HttpError(400, f"unsupported AdmissionReview apiVersion {version!r}")
    request = review.get("request")
    if (
        not isinstance(request, dict)
        or not isinstance(request.get("uid"), str)
        or not request["uid"]
    ):
        raise HttpError(400, "AdmissionReview has no request.uid")
    response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
    answer = {"apiVersion": version, "kind": "AdmissionReview", "response": response}
    namespace = request.get("namespace")
    if route.startswith("/validate"):
        return answer, {
            "action": "validate",
            "namespace": namespace,
            "kind": (request.get("kind") or {}).get("kind"),
        }
    pod = request.get("object")
    if not isinstance(pod, dict) or not isinstance(pod.get("spec"), dict):
        raise HttpError(400, "request.object is not a pod (no spec)")
    meta = pod.get("metadata") or {}
    fields: dict[str, Any] = {
        "namespace": namespace,
        "pod": meta.get("name") or meta.get("generateName"),
    }
    reason = skip_reason(pod)
    if reason:
        return answer, {"action": "skip", **fields, "reason": reason}
    ops = injection_patch(pod, rev, image)
    response["patchType"] = "JSONPatch"
    response["patch"] = base64.b64encode(json.dumps(ops).encode()).decode()
    return answer, {"action": "inject", **fields, "image": image}


# ---- certificates ------------------------------------------------------------------------


def _openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run the openssl CLI; its stderr goes into the error so a failure says why."""
    cmd = ["openssl", *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])}... failed: {done.stderr.strip()[:500]}")
    return done


def _cert_usable(pem: Path, ca_crt: Path) -> bool:
    """A cached certificate is reused only if the current CA signed it and it has a day left."""
    try:
        _openssl("verify", "-CAfile", ca_crt, "-purpose", "sslserver", pem)
        _openssl("x509", "-in", pem, "-noout", "-checkend", "86400")
    except RuntimeError:
        return False
    return True


def ensure_cert(certs_dir: Path, rev: str, ca_crt: Path, ca_key: Path) -> Path:
    """Serving certificate and key of istiod-REV in one PEM file, made once and then reused.

    One file replaced atomically, so a crash can never leave a key beside another key's cert.
    """
    pem = certs_dir / f"istiod-{rev}.pem"
    if pem.exists() and _cert_usable(pem, ca_crt):
        return pem
    certs_dir.mkdir(parents=True, exist_ok=True)
    names = service_dns_names(rev)
    with tempfile.TemporaryDirectory(dir=certs_dir) as tmp:
        work = Path(tmp)
        (work / "ext.cnf").write_text(
            f"subjectAltName={','.join('DNS:' + n for n in names)}\n"
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth\n"
            "subjectKeyIdentifier=hash\n"
            "authorityKeyIdentifier=keyid,issuer\n"
        )
        key, csr, crt = work / "key.pem", work / "csr.pem", work / "crt.pem"
        new_key = ["-new", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={names[0]}"]
        _openssl("req", *new_key, "-keyout", key, "-out", csr)
        # A random serial, not -CAcreateserial: that would write a .srl file into the PKI dir.
        serial = f"0x{secrets.token_hex(16)}"
        signing: list[str | Path] = ["-CA", ca_crt, "-CAkey", ca_key, "-set_serial", serial]
        validity: list[str | Path] = ["-days", "365", "-sha256", "-extfile", work / "ext.cnf"]
        _openssl("x509", "-req", "-in", csr, *signing, *validity, "-out", crt)
        combined = work / "combined.pem"
        combined.write_text(crt.read_text() + key.read_text())
        combined.chmod(0o600)
        os.replace(combined, pem)
    return pem


# ---- TLS webhook server (one per revision) ----------------------------------------------


class _AdmissionHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive handler: the apiserver reuses its webhook connections."""

    protocol_version = "HTTP/1.1"
    server_version = "sandbox-injector"
    timeout = IDLE_TIMEOUT
    server: RevisionServer

    def do_POST(self) -> None:
        rev = self.server.revision
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self._send(411, "text/plain", b"Content-Length required\n", close=True)
            return
        if int(length) > MAX_BODY:
            self._send(413, "text/plain", b"request body too large\n", close=True)
            return
        raw = self.rfile.read(int(length))
        try:
            answer, fields = admission_reply(self.path, raw, rev, self.server.image)
        except HttpError as err:
            log("bad-request", rev, status=err.status, path=self.path, error=str(err))
            self._send(err.status, "text/plain", f"{err}\n".encode())
            return
        log(fields.pop("action"), rev, **fields)
        self._send(200, "application/json", json.dumps(answer).encode())

    def _send(self, status: int, content_type: str, body: bytes, close: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if close:
            # The unread body would be parsed as the next request.
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: do_POST writes one structured line per request instead."""


class RevisionServer(ThreadingHTTPServer):
    """istiod-REV's webhook endpoint: HTTPS on an ephemeral loopback port."""

    daemon_threads = True

    def __init__(self, revision: str, pem: Path, image: str) -> None:
        super().__init__(("127.0.0.1", 0), _AdmissionHandler)
        self.revision = revision
        self.image = image  # replaced by the reconciler when the ConfigMap changes
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.load_cert_chain(pem)
        # Only HTTP/1.1: the handler does not speak HTTP/2, which Go would otherwise offer.
        self.context.set_alpn_protocols(["http/1.1"])
        self._conns: set[ssl.SSLSocket] = set()
        self._conns_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread = threading.Thread(
            target=self.serve_forever, name=f"tls-{self.revision}", daemon=True
        )
        self._thread.start()

    def finish_request(self, request: Any, client_address: Any) -> None:
        """TLS handshake in the connection's own thread, so a slow client blocks nobody else."""
        request.settimeout(HANDSHAKE_TIMEOUT)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as err:
            log("tls-error", self.revision, error=err)
            return
        with self._conns_lock:
            self._conns.add(tls)
        try:
            _AdmissionHandler(tls, client_address, self)
        finally:
            with self._conns_lock:
                self._conns.discard(tls)
            tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One log line instead of socketserver's traceback on stderr."""
        log("handler-error", self.revision, error=repr(sys.exc_info()[1]))

    def stop(self) -> None:
        """Stop accepting and cut open keep-alive connections, so nothing answers for REV."""
        if self._thread is not None:
            self.shutdown()
        self.server_close()
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


# ---- CONNECT proxy on the unix socket ----------------------------------------------------

# Seam: host from the CONNECT line -> (revision, local port); raises LookupError(reason).
Resolver = Callable[[str], tuple[str, int]]


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    """Copy bytes until EOF, then half-close so the other side sees the end too."""
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def _reply(conn: socket.socket, status: str, message: str) -> None:
    """An HTTP error answer to a CONNECT, closing the connection."""
    body = f"{message}\n".encode()
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    with contextlib.suppress(OSError):
        conn.sendall(head.encode() + body)


class _ConnectHandler(socketserver.BaseRequestHandler):
    """One tunnel: read the CONNECT head, pick the revision's loopback port, pipe bytes."""

    server: ConnectProxy

    def handle(self) -> None:
        conn: socket.socket = self.request
        conn.settimeout(HANDSHAKE_TIMEOUT)
        head = b""
        try:
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk or len(head) + len(chunk) > MAX_CONNECT_HEAD:
                    log("connect-error", error="incomplete or oversized CONNECT head")
                    return
                head += chunk
        except OSError as err:
            log("connect-error", error=err)
            return
        head, rest = head.split(b"\r\n\r\n", 1)
        try:
            host, port = parse_connect(head)
        except ValueError as err:
            log("connect-error", error=err)
            _reply(conn, "400 Bad Request", str(err))
            return
        target = f"{host}:{port}"
        try:
            rev, local_port = self.server.route(host, port)
        except LookupError as err:
            log("connect-refused", target=target, reason=err)
            _reply(conn, "503 Service Unavailable", f"no injector for {target}: {err}")
            return
        try:
            upstream = socket.create_connection(
                ("127.0.0.1", local_port), timeout=HANDSHAKE_TIMEOUT
            )
        except OSError as err:
            log("connect-refused", rev, target=target, reason=err)
            _reply(conn, "503 Service Unavailable", f"injector for {target} unreachable: {err}")
            return
        with upstream:
            # Exactly this answer and nothing after it: the apiserver refuses buffered extra bytes.
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            log("connect", rev, target=target, port=local_port)
            conn.settimeout(None)
            upstream.settimeout(None)
            if rest:
                upstream.sendall(rest)
            other = threading.Thread(target=_pipe, args=(conn, upstream), daemon=True)
            other.start()
            _pipe(upstream, conn)
            other.join()


class ConnectProxy(socketserver.ThreadingUnixStreamServer):
    """The apiserver's egress "cluster": HTTP CONNECT over a unix socket, to loopback only."""

    daemon_threads = True

    def __init__(self, path: str | Path, resolve: Resolver, kubelet_port: int = 0) -> None:
        self.path = Path(path)
        self.resolve = resolve
        self.kubelet_port = kubelet_port
        if len(os.fsencode(self.path)) + 4 > 107:
            raise ValueError(f"unix socket path too long (max 103 bytes): {self.path}")
        self._tmp = Path(f"{self.path}.tmp")
        super().__init__(str(self._tmp), _ConnectHandler, bind_and_activate=False)
        self._thread: threading.Thread | None = None
        self._inode: int | None = None

    def route(self, host: str, port: int) -> tuple[str, int]:
        """The nodes' kubelet endpoint (loopback, see sandbox/runtime.py) or an istiod."""
        if self.kubelet_port and (host, port) == ("127.0.0.1", self.kubelet_port):
            return "kubelet", port
        return self.resolve(host)

    def start(self) -> None:
        """Bind aside, restrict to the owner, listen, then rename into place: whoever sees
        the socket file can connect at once (the file is the ready signal)."""
        self._tmp.unlink(missing_ok=True)
        self.server_bind()
        os.chmod(self._tmp, 0o600)
        self.server_activate()
        os.replace(self._tmp, self.path)
        self._inode = self.path.stat().st_ino
        self._thread = threading.Thread(
            target=self.serve_forever, name="connect-proxy", daemon=True
        )
        self._thread.start()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One log line instead of socketserver's traceback on stderr."""
        log("connect-error", error=repr(sys.exc_info()[1]))

    def stop(self) -> None:
        """Stop serving and remove the socket file, unless a successor already replaced it."""
        if self._thread is not None:
            self.shutdown()
        self.server_close()
        try:
            if self._inode is not None and self.path.stat().st_ino == self._inode:
                self.path.unlink()
        except FileNotFoundError:
            pass


def claim_socket(path: Path) -> bool:
    """Remove a stale socket file; False when a live process still answers on it."""
    if not path.exists() and not path.is_symlink():
        return True
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)
        return True
    finally:
        probe.close()
    return False


# ---- the reconciler ----------------------------------------------------------------------


class Injector:
    """Keeps one RevisionServer per injector ConfigMap and the webhooks' caBundle in step."""

    def __init__(self, api: KubeApi, pki: Path, workdir: Path) -> None:
        self.api = api
        self.ca_crt = pki / "ca.crt"
        self.ca_key = pki / "ca.key"
        self.ca_b64 = base64.b64encode(self.ca_crt.read_bytes()).decode()
        self.certs = workdir / "certs"
        self.servers: dict[str, RevisionServer] = {}
        self.services: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._reported: dict[str, str] = {}

    def _report(self, key: str, error: str | None, revision: str | None = None) -> None:
        """Log an error once per change (the loop runs every second), and its recovery."""
        before = self._reported.get(key)
        if error == before:
            return
        if error is None:
            del self._reported[key]
            log("recovered", revision, what=key)
        else:
            self._reported[key] = error
            log("error", revision, what=key, error=error)

    def reconcile(self) -> bool:
        """One pass; True when everything converged without error."""
        try:
            items = self.api.get(f"/api/v1/namespaces/{NAMESPACE}/configmaps")["items"]
        except API_ERRORS as err:
            self._report("list-configmaps", str(err))
            return False
        self._report("list-configmaps", None)
        clean = True
        wanted: dict[str, dict[str, Any]] = {}
        for cm in items:
            rev = revision_of_configmap(cm["metadata"]["name"])
            if rev:
                wanted[rev] = cm
        for rev, cm in sorted(wanted.items()):
            clean &= self._serve(rev, cm)
        with self._lock:
            gone = [rev for rev in self.servers if rev not in wanted]
            stopped = [self.servers.pop(rev) for rev in gone]
        for server in stopped:
            server.stop()
            log("stop-serving", server.revision, reason="configmap-deleted")
        for rev in sorted(self.servers):
            clean &= self._patch_ca_bundles(rev)
        return clean

    def _serve(self, rev: str, cm: dict[str, Any]) -> bool:
        """Start or update the revision's server from its ConfigMap's values."""
        try:
            image = proxy_image(json.loads((cm.get("data") or {}).get("values") or "{}"))
        except (ValueError, AttributeError) as err:
            # A running server keeps its last good image rather than failing every pod.
            self._report(
                f"values/{rev}", f"cannot read values of {cm['metadata']['name']}: {err}", rev
            )
            return False
        self._report(f"values/{rev}", None, rev)
        server = self.servers.get(rev)
        if server is not None:
            if server.image != image:
                log("image-changed", rev, old=server.image, new=image)
                server.image = image
            return True
        try:
            pem = ensure_cert(self.certs, rev, self.ca_crt, self.ca_key)
            server = RevisionServer(rev, pem, image)
        except (RuntimeError, OSError, ssl.SSLError) as err:
            self._report(f"serve/{rev}", str(err), rev)
            return False
        self._report(f"serve/{rev}", None, rev)
        server.start()
        with self._lock:
            self.servers[rev] = server
        log("serve", rev, port=server.port, image=image, cert=pem)
        return True

    def _patch_ca_bundles(self, rev: str) -> bool:
        """Put the sandbox CA into every webhook calling istiod-REV, as istiod's controller does."""
        clean = True
        for kind, path in WEBHOOK_KINDS.items():
            try:
                configs = self.api.get(path)["items"]
            except API_ERRORS as err:
                self._report(f"list/{kind}", str(err))
                clean = False
                continue
            self._report(f"list/{kind}", None)
            for config in configs:
                name = config["metadata"]["name"]
                indexes = webhooks_needing_ca(config, rev, self.ca_b64)
                if not indexes:
                    continue
                try:
                    self.api.json_patch(
                        f"{path}/{name}", ca_bundle_patch(config, indexes, self.ca_b64)
                    )
                except API_ERRORS as err:
                    self._report(f"patch/{kind}/{name}", str(err), rev)
                    clean = False
                    continue
                self._report(f"patch/{kind}/{name}", None, rev)
                log(
                    "ca-bundle-patched",
                    rev,
                    kind=kind,
                    config=name,
                    webhooks=",".join(map(str, indexes)),
                )
        return clean

    def resolve(self, host: str) -> tuple[str, int]:
        """Route a CONNECT target to a served revision; the Service list is re-read on a miss."""
        for attempt in ("cached", "refreshed"):
            if attempt == "refreshed":
                try:
                    services = self.api.get(f"/api/v1/namespaces/{NAMESPACE}/services")["items"]
                except API_ERRORS as err:
                    raise LookupError(f"cannot list services: {err}") from err
                with self._lock:
                    self.services = services
            with self._lock:
                rev = revision_for_target(host, self.services)
                server = self.servers.get(rev) if rev else None
            if server is not None:
                return server.revision, server.port
        if rev is None:
            raise LookupError(f"no Service {NAMESPACE}/istiod-<rev> has this address")
        raise LookupError(f"revision {rev} has no injector ConfigMap")

    def close(self) -> None:
        """Stop every revision's server."""
        with self._lock:
            servers = list(self.servers.values())
            self.servers.clear()
        for server in servers:
            server.stop()


# ---- process -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Reconcile every second; open the socket after the first clean pass; exit on SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python3 -m sandbox.injector", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--server", required=True, help="apiserver URL, e.g. https://127.0.0.1:16443"
    )
    parser.add_argument(
        "--pki", required=True, type=Path, help="dir with ca.crt, ca.key, admin.crt, admin.key"
    )
    parser.add_argument(
        "--socket", required=True, type=Path, help="unix socket the apiserver's egress dials"
    )
    parser.add_argument(
        "--workdir", required=True, type=Path, help="state dir (serving certificates)"
    )
    parser.add_argument(
        "--kubelet-port", type=int, default=0, help="the nodes' kubelet port (pod logs)"
    )
    args = parser.parse_args(argv)

    stop = threading.Event()
    received: list[str] = []

    def on_signal(signum: int, _frame: Any) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    log("start", server=args.server, socket=args.socket, workdir=args.workdir, pid=os.getpid())
    if not claim_socket(args.socket):
        log("exit", reason="another process is serving on the socket", socket=args.socket)
        return 1
    args.workdir.mkdir(parents=True, exist_ok=True)
    injector = Injector(from_files(args.server, str(args.pki)), args.pki, args.workdir)
    proxy: ConnectProxy | None = None
    try:
        while not stop.is_set():
            try:
                clean = injector.reconcile()
            except Exception as err:  # noqa: BLE001 - a bug in one pass must not end the process
                log("error", what="reconcile", error=repr(err))
                clean = False
            if clean and proxy is None:
                proxy = ConnectProxy(args.socket, injector.resolve, args.kubelet_port)
                proxy.start()
                log(
                    "ready", socket=args.socket, revisions=",".join(sorted(injector.servers)) or "-"
                )
            stop.wait(RECONCILE_INTERVAL)
    finally:
        log("shutdown", signal=",".join(received) or None)
        if proxy is not None:
            proxy.stop()
        injector.close()
        log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
