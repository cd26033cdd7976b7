"""Tests of the sandbox's istiod stand-in: pure functions, then proxy + TLS server end to end."""

from __future__ import annotations

import base64
import copy
import http.client
import json
import os
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.injector import (
    ConnectProxy,
    HttpError,
    RevisionServer,
    admission_reply,
    ca_bundle_patch,
    claim_socket,
    ensure_cert,
    format_log,
    injection_patch,
    parse_connect,
    pointer,
    proxy_image,
    revision_for_target,
    revision_of_configmap,
    sidecar_status,
    skip_reason,
    webhooks_needing_ca,
)

REPO = Path(__file__).resolve().parents[3]
IMAGE = "docker.io/istio/proxyv2:1.31.0-dev"


# ---- a small RFC 6902 applier, so tests check what a patch does, not how it is spelled ----


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def apply_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """Apply add/replace/test strictly: a missing parent or bad index raises (as the apiserver)."""
    doc = copy.deepcopy(doc)
    for op in ops:
        *parents, last = [_unescape(t) for t in op["path"].split("/")[1:]]
        target = doc
        for token in parents:
            target = target[int(token)] if isinstance(target, list) else target[token]
        if op["op"] == "test":
            current = target[int(last)] if isinstance(target, list) else target[last]
            assert current == op["value"], f"test failed at {op['path']}"
        elif op["op"] == "add":
            if isinstance(target, list):
                target.insert(len(target) if last == "-" else int(last), op["value"])
            else:
                target[last] = op["value"]
        elif op["op"] == "replace":
            if isinstance(target, list):
                target[int(last)] = op["value"]
            else:
                assert last in target, f"replace of missing {op['path']}"
                target[last] = op["value"]
        else:
            raise AssertionError(f"unexpected op {op['op']}")
    return doc


def pod(
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    containers: list[dict[str, Any]] | None = None,
    **meta: Any,
) -> dict[str, Any]:
    """A pod as the apiserver sends it to a webhook (no name yet, only generateName)."""
    metadata: dict[str, Any] = {"generateName": "bar-5d8f7c9b6-", "namespace": "bar", **meta}
    if labels is not None:
        metadata["labels"] = labels
    if annotations is not None:
        metadata["annotations"] = annotations
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "containers": containers
            if containers is not None
            else [{"name": "bar", "image": "bar:1"}]
        },
    }


# ---- proxy_image -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        pytest.param(
            {"global": {"hub": "docker.io/istio", "tag": "1.15.4", "proxy": {"image": "proxyv2"}}},
            "docker.io/istio/proxyv2:1.15.4",
            id="hub-image-tag",
        ),
        pytest.param(
            {"global": {"hub": "gcr.io/istio-release", "tag": "1.31.0-dev"}},
            "gcr.io/istio-release/proxyv2:1.31.0-dev",
            id="image-defaults-to-proxyv2",
        ),
        pytest.param(
            {"global": {"hub": "h", "tag": 1.3, "proxy": {"image": "proxyv2"}}},
            "h/proxyv2:1.3",
            id="numeric-tag-as-text",
        ),
        pytest.param(
            {"global": {"hub": "h", "tag": "1.15.4", "variant": "distroless"}},
            "h/proxyv2:1.15.4-distroless",
            id="variant-appended",
        ),
        pytest.param(
            {"global": {"hub": "h", "tag": "1.15.4-debug", "variant": "distroless"}},
            "h/proxyv2:1.15.4-distroless",
            id="variant-replaces-known-suffix",
        ),
        pytest.param(
            {"global": {"hub": "h", "tag": "1.15.4-distroless", "variant": "default"}},
            "h/proxyv2:1.15.4",
            id="variant-default-strips-suffix",
        ),
        pytest.param(
            {"global": {"proxy": {"image": "my.registry/proxy:custom"}}},
            "my.registry/proxy:custom",
            id="full-reference-used-verbatim",
        ),
    ],
)
def test_proxy_image(values: dict[str, Any], expected: str) -> None:
    assert proxy_image(values) == expected


@pytest.mark.parametrize(
    "values",
    [
        pytest.param({}, id="empty"),
        pytest.param({"global": {"tag": "1.15.4"}}, id="no-hub"),
        pytest.param({"global": {"hub": "h", "tag": ""}}, id="empty-tag"),
    ],
)
def test_proxy_image_rejects_incomplete_values(values: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"hub and values\.global\.tag"):
        proxy_image(values)


# ---- revision_for_target -----------------------------------------------------------------


def service(
    name: str, ip: str, namespace: str = "istio-system", ips: list[str] | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {"clusterIP": ip}
    if ips is not None:
        spec["clusterIPs"] = ips
    return {"metadata": {"name": name, "namespace": namespace}, "spec": spec}


SERVICES = [
    service("istiod-1-14-6", "10.96.0.10"),
    service("istiod-1-15-4", "10.96.0.20", ips=["10.96.0.20", "fd00::20"]),
    service("istio-ingressgateway", "10.96.0.30"),
    service("istiod-9-9-9", "10.96.0.40", namespace="other"),
    service("istiod-headless", "None"),
]


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        pytest.param("10.96.0.10", "1-14-6", id="cluster-ip-old"),
        pytest.param("10.96.0.20", "1-15-4", id="cluster-ip-new"),
        pytest.param("[fd00::20]", "1-15-4", id="ipv6-bracketed"),
        pytest.param("fd00:0:0::20", "1-15-4", id="ipv6-non-canonical"),
        pytest.param("istiod-1-15-4.istio-system.svc", "1-15-4", id="svc-name"),
        pytest.param(
            "istiod-1-15-4.istio-system.svc.cluster.local.", "1-15-4", id="fqdn-trailing-dot"
        ),
        pytest.param("ISTIOD-1-14-6.istio-system", "1-14-6", id="short-name-any-case"),
        pytest.param("10.96.0.30", None, id="other-service-ip"),
        pytest.param("10.96.0.40", None, id="istiod-in-other-namespace"),
        pytest.param("None", None, id="headless-is-no-ip"),
        pytest.param("10.96.0.99", None, id="unknown-ip"),
        pytest.param("istiod-2-0-0.istio-system.svc", None, id="name-without-service"),
    ],
)
def test_revision_for_target(host: str, expected: str | None) -> None:
    assert revision_for_target(host, SERVICES) == expected


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        pytest.param(
            b"CONNECT 10.96.0.20:443 HTTP/1.1\r\nHost: 127.0.0.1", ("10.96.0.20", 443), id="ipv4"
        ),
        pytest.param(b"CONNECT [fd00::20]:443 HTTP/1.1", ("fd00::20", 443), id="ipv6"),
        pytest.param(
            b"CONNECT istiod-x.istio-system.svc:15017 HTTP/1.0",
            ("istiod-x.istio-system.svc", 15017),
            id="name",
        ),
    ],
)
def test_parse_connect(head: bytes, expected: tuple[str, int]) -> None:
    assert parse_connect(head) == expected


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(b"GET / HTTP/1.1", id="not-connect"),
        pytest.param(b"CONNECT 10.0.0.1 HTTP/1.1", id="no-port"),
        pytest.param(b"CONNECT :443 HTTP/1.1", id="no-host"),
        pytest.param(b"CONNECT 10.0.0.1:https HTTP/1.1", id="port-not-numeric"),
        pytest.param(b"CONNECT 10.0.0.1:443", id="no-version"),
        pytest.param("CONNECT é:443 HTTP/1.1".encode(), id="not-ascii"),
    ],
)
def test_parse_connect_rejects(head: bytes) -> None:
    with pytest.raises(ValueError):
        parse_connect(head)


# ---- webhooks and caBundle ---------------------------------------------------------------

CA = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nsandbox\n").decode()


def hook(
    name: str, svc: str | None, namespace: str = "istio-system", ca: str | None = None
) -> dict[str, Any]:
    client: dict[str, Any] = (
        {"url": "https://example.invalid/inject"}
        if svc is None
        else {"service": {"name": svc, "namespace": namespace, "path": "/inject", "port": 443}}
    )
    if ca is not None:
        client["caBundle"] = ca
    return {"name": name, "clientConfig": client}


@pytest.mark.parametrize(
    ("webhooks", "expected"),
    [
        pytest.param([hook("a", "istiod-1-15-4")], [0], id="no-bundle-yet"),
        pytest.param([hook("a", "istiod-1-15-4", ca="b2xk")], [0], id="stale-bundle"),
        pytest.param([hook("a", "istiod-1-15-4", ca=CA)], [], id="already-current"),
        pytest.param([hook("a", "istiod-1-14-6")], [], id="other-revision"),
        pytest.param([hook("a", "istiod-1-15-4", namespace="default")], [], id="other-namespace"),
        pytest.param([hook("a", None)], [], id="url-webhook"),
        pytest.param(
            [
                hook("rev.ns", "istiod-1-15-4", ca=CA),
                hook("rev.obj", "istiod-1-15-4"),
                hook("other", "istiod-1-14-6"),
                hook("rev.ns2", "istiod-1-15-4", ca="b2xk"),
            ],
            [1, 3],
            id="mixed-list",
        ),
        pytest.param(None, [], id="no-webhooks"),
    ],
)
def test_webhooks_needing_ca(webhooks: list[dict[str, Any]] | None, expected: list[int]) -> None:
    config = {"metadata": {"name": "istio-revision-tag-default"}, "webhooks": webhooks}
    assert webhooks_needing_ca(config, "1-15-4", CA) == expected


def test_ca_bundle_patch_sets_only_the_listed_webhooks_and_guards_their_names() -> None:
    config = {
        "webhooks": [
            hook("a", "istiod-1-15-4", ca=CA),
            hook("b", "istiod-1-15-4"),
            hook("c", "istiod-1-15-4"),
        ]
    }
    indexes = webhooks_needing_ca(config, "1-15-4", CA)
    ops = ca_bundle_patch(config, indexes, CA)
    patched = apply_patch(config, ops)
    assert [w["clientConfig"].get("caBundle") for w in patched["webhooks"]] == [CA, CA, CA]
    assert webhooks_needing_ca(patched, "1-15-4", CA) == []
    # Reordered since it was read: the name guard makes the patch fail instead of hitting "a".
    reordered = {"webhooks": [config["webhooks"][0], config["webhooks"][2], config["webhooks"][1]]}
    with pytest.raises(AssertionError, match="test failed"):
        apply_patch(reordered, ops)


# ---- injection ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("the_pod", "expected"),
    [
        pytest.param(pod(), None, id="plain-pod"),
        pytest.param(
            pod(annotations={"sidecar.istio.io/status": "{}"}),
            "already-injected",
            id="already-injected",
        ),
        pytest.param(
            pod(annotations={"sidecar.istio.io/inject": "false"}),
            "sidecar.istio.io/inject=false",
            id="annotation-false",
        ),
        pytest.param(
            pod(labels={"sidecar.istio.io/inject": "false"}),
            "sidecar.istio.io/inject=false",
            id="label-false",
        ),
        pytest.param(
            pod(
                labels={"sidecar.istio.io/inject": "true"},
                annotations={"sidecar.istio.io/inject": "false"},
            ),
            None,
            id="label-wins-over-annotation",
        ),
        pytest.param(
            pod(annotations={"sidecar.istio.io/inject": "True"}), None, id="annotation-true"
        ),
        pytest.param(
            {**pod(), "spec": {"hostNetwork": True, "containers": []}},
            "host-network",
            id="host-network",
        ),
    ],
)
def test_skip_reason(the_pod: dict[str, Any], expected: str | None) -> None:
    assert skip_reason(the_pod) == expected
    if expected:
        assert injection_patch(the_pod, "1-15-4", IMAGE) == []


def test_sidecar_status_is_istiods_compact_json() -> None:
    assert sidecar_status("1-15-4") == (
        '{"initContainers":null,"containers":["istio-proxy"],"volumes":["istio-envoy"],'
        '"imagePullSecrets":null,"revision":"1-15-4"}'
    )


RS_OWNER = {
    "apiVersion": "apps/v1",
    "kind": "ReplicaSet",
    "name": "bar-5d8f7c9b6",
    "controller": True,
}


@pytest.mark.parametrize(
    ("the_pod", "name", "revision"),
    [
        pytest.param(
            pod(labels={"app": "bar", "version": "v2"}), "bar", "v2", id="app-and-version-labels"
        ),
        pytest.param(
            pod(
                labels={
                    "app.kubernetes.io/name": "web",
                    "app": "bar",
                    "app.kubernetes.io/version": "3",
                }
            ),
            "web",
            "3",
            id="recommended-labels-first",
        ),
        pytest.param(
            pod(labels={"pod-template-hash": "5d8f7c9b6"}, ownerReferences=[RS_OWNER]),
            "bar",
            "latest",
            id="owner-replicaset-minus-hash",
        ),
        pytest.param(
            pod(labels={"pod-template-hash": "5d8f7c9b6"}),
            "bar",
            "latest",
            id="generate-name-minus-hash",
        ),
        pytest.param(
            pod(ownerReferences=[{"kind": "StatefulSet", "name": "db", "controller": True}]),
            "db",
            "latest",
            id="owner-statefulset",
        ),
        pytest.param(pod(labels=None), "bar-5d8f7c9b6", "latest", id="no-labels-at-all"),
    ],
)
def test_injection_patch_result(the_pod: dict[str, Any], name: str, revision: str) -> None:
    injected = apply_patch(the_pod, injection_patch(the_pod, "1-15-4", IMAGE))
    meta, spec = injected["metadata"], injected["spec"]
    assert [c["name"] for c in spec["containers"]] == ["bar", "istio-proxy"]
    assert spec["containers"][1]["image"] == IMAGE
    mounts = {m["name"] for c in spec["containers"] for m in c.get("volumeMounts", [])}
    assert mounts <= {v["name"] for v in spec["volumes"]}, "every mount needs its volume"
    status = json.loads(meta["annotations"]["sidecar.istio.io/status"])
    assert status["revision"] == "1-15-4"
    assert status["containers"] == ["istio-proxy"]
    assert meta["annotations"]["istio.io/rev"] == "1-15-4"
    assert meta["labels"]["security.istio.io/tlsMode"] == "istio"
    assert meta["labels"]["service.istio.io/canonical-name"] == name
    assert meta["labels"]["service.istio.io/canonical-revision"] == revision
    # What was there stays.
    for key, value in (the_pod["metadata"].get("labels") or {}).items():
        assert meta["labels"][key] == value


def test_injection_patch_escapes_keys_and_keeps_existing_maps() -> None:
    the_pod = pod(labels={"app": "bar"}, annotations={"a/b~c": "x"})
    the_pod["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}]
    ops = injection_patch(the_pod, "1-15-4", IMAGE)
    paths = [op["path"] for op in ops]
    assert "/metadata/labels/security.istio.io~1tlsMode" in paths
    assert "/metadata/annotations/sidecar.istio.io~1status" in paths
    assert "/spec/volumes/-" in paths and "/spec/containers/-" in paths
    assert "/metadata/labels" not in paths and "/metadata/annotations" not in paths
    injected = apply_patch(the_pod, ops)
    assert injected["metadata"]["annotations"]["a/b~c"] == "x"
    assert [v["name"] for v in injected["spec"]["volumes"]] == ["data", "istio-envoy"]


def test_injection_patch_gateway_template_replaces_the_auto_image_only() -> None:
    containers = [{"name": "istio-proxy", "image": "auto", "ports": [{"containerPort": 8080}]}]
    the_pod = pod(
        labels={"app": "istio-ingressgateway", "istio": "ingressgateway"},
        annotations={"inject.istio.io/templates": "gateway"},
        containers=containers,
    )
    injected = apply_patch(the_pod, injection_patch(the_pod, "1-15-4", IMAGE))
    assert injected["spec"]["containers"] == [{**containers[0], "image": IMAGE}]
    assert (
        json.loads(injected["metadata"]["annotations"]["sidecar.istio.io/status"])["revision"]
        == "1-15-4"
    )
    assert injected["metadata"]["annotations"]["inject.istio.io/templates"] == "gateway"


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        pytest.param(("metadata", "labels", "a/b"), "/metadata/labels/a~1b", id="slash"),
        pytest.param(("metadata", "labels", "a~b"), "/metadata/labels/a~0b", id="tilde"),
        pytest.param(("x", "~/"), "/x/~0~1", id="tilde-then-slash"),
        pytest.param(("webhooks", 3, "name"), "/webhooks/3/name", id="index"),
    ],
)
def test_pointer(parts: tuple[str | int, ...], expected: str) -> None:
    assert pointer(*parts) == expected


# ---- admission_reply ---------------------------------------------------------------------


def review(the_pod: dict[str, Any] | None, version: str = "admission.k8s.io/v1") -> bytes:
    request: dict[str, Any] = {
        "uid": "u-1",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "namespace": "bar",
    }
    if the_pod is not None:
        request["object"] = the_pod
    return json.dumps(
        {"apiVersion": version, "kind": "AdmissionReview", "request": request}
    ).encode()


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        pytest.param("/inject", b"{not json", 400, "not JSON", id="bad-json"),
        pytest.param("/inject", b"[1]", 400, "not an AdmissionReview", id="not-an-object"),
        pytest.param(
            "/inject",
            b'{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v2","request":{"uid":"u"}}',
            400,
            "apiVersion",
            id="unknown-version",
        ),
        pytest.param(
            "/inject",
            b'{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{}}',
            400,
            "request.uid",
            id="no-uid",
        ),
        pytest.param("/inject", review(None), 400, "not a pod", id="no-object"),
        pytest.param("/mutate", review(pod()), 404, "no handler", id="unknown-path"),
    ],
)
def test_admission_reply_rejects(path: str, body: bytes, status: int, message: str) -> None:
    with pytest.raises(HttpError, match=message) as caught:
        admission_reply(path, body, "1-15-4", IMAGE)
    assert caught.value.status == status


@pytest.mark.parametrize(
    ("path", "body", "action", "patched"),
    [
        pytest.param(
            "/inject/cluster/Kubernetes/net/network1", review(pod()), "inject", True, id="inject-v1"
        ),
        pytest.param(
            "/inject?timeout=10s",
            review(pod(), "admission.k8s.io/v1beta1"),
            "inject",
            True,
            id="inject-v1beta1-echoed",
        ),
        pytest.param(
            "/inject",
            review(pod(labels={"sidecar.istio.io/inject": "false"})),
            "skip",
            False,
            id="opted-out",
        ),
        pytest.param("/validate", review(None), "validate", False, id="validate"),
    ],
)
def test_admission_reply_answers(path: str, body: bytes, action: str, patched: bool) -> None:
    answer, fields = admission_reply(path, body, "1-15-4", IMAGE)
    sent = json.loads(body)
    assert answer["apiVersion"] == sent["apiVersion"]
    assert answer["kind"] == "AdmissionReview"
    assert answer["response"]["uid"] == "u-1"
    assert answer["response"]["allowed"] is True
    assert fields["action"] == action
    assert ("patch" in answer["response"]) is patched
    if patched:
        assert answer["response"]["patchType"] == "JSONPatch"
        ops = json.loads(base64.b64decode(answer["response"]["patch"]))
        injected = apply_patch(sent["request"]["object"], ops)
        assert injected["spec"]["containers"][-1]["image"] == IMAGE


# ---- small helpers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param("istio-sidecar-injector-1-15-4", "1-15-4", id="revision"),
        pytest.param("istio-sidecar-injector", None, id="default-revision-unsupported"),
        pytest.param("istio-sidecar-injector-../x", None, id="not-a-dns-label"),
        pytest.param("istio-1-15-4", None, id="mesh-configmap"),
    ],
)
def test_revision_of_configmap(name: str, expected: str | None) -> None:
    assert revision_of_configmap(name) == expected


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param(
            {"revision": "1-15-4", "action": "serve", "port": 4431},
            "revision=1-15-4 action=serve port=4431",
            id="plain",
        ),
        pytest.param(
            {"action": "error", "error": 'a b="c"'}, 'action=error error="a b=\\"c\\""', id="quoted"
        ),
        pytest.param(
            {"action": "x", "revision": None, "empty": ""}, 'action=x empty=""', id="none-dropped"
        ),
    ],
)
def test_format_log(fields: dict[str, Any], expected: str) -> None:
    assert format_log(fields) == expected


# ---- end to end: CONNECT over the unix socket, TLS, AdmissionReview -----------------------


def make_ca(directory: Path) -> tuple[Path, Path]:
    """A throwaway CA made with the openssl CLI, like the sandbox's."""
    crt, key = directory / "ca.crt", directory / "ca.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(crt),
            "-subj",
            "/CN=test-sandbox-ca",
            "-days",
            "2",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
        check=True,
        capture_output=True,
    )
    return crt, key


def connect_through(sock_path: Path, target: str) -> tuple[socket.socket, bytes]:
    """Open a tunnel as the apiserver does; returns the socket and the proxy's answer head."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(10)
    conn.connect(str(sock_path))
    conn.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.recv(1)  # byte by byte: nothing after the head may be consumed
        if not chunk:
            break
        head += chunk
    return conn, head


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory: unix socket paths are limited to about 100 bytes."""
    with tempfile.TemporaryDirectory(prefix="inj-", dir="/tmp") as tmp:
        yield Path(tmp)


def test_connect_proxy_tls_and_injection_end_to_end(tmp_path: Path, short_tmp: Path) -> None:
    ca_crt, ca_key = make_ca(tmp_path)
    pem = ensure_cert(tmp_path / "certs", "1-15-4", ca_crt, ca_key)
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600
    assert ensure_cert(tmp_path / "certs", "1-15-4", ca_crt, ca_key) == pem
    cached = pem.read_bytes()
    server = RevisionServer("1-15-4", pem, IMAGE)
    server.start()

    services = [service("istiod-1-15-4", "10.96.0.20")]

    def resolve(host: str) -> tuple[str, int]:
        # The seam: a fixed Service list instead of the apiserver.
        rev = revision_for_target(host, services)
        if rev != "1-15-4":
            raise LookupError("unknown target")
        return rev, server.port

    sock_path = short_tmp / "egress.sock"
    sock_path.write_text("stale")  # a leftover file from a crashed run
    assert claim_socket(sock_path)
    proxy = ConnectProxy(sock_path, resolve)
    proxy.start()
    try:
        assert stat.S_ISSOCK(sock_path.stat().st_mode)
        assert stat.S_IMODE(sock_path.stat().st_mode) == 0o600
        assert not claim_socket(sock_path), "a live socket must not be taken over"

        refused, head = connect_through(sock_path, "10.96.0.99:443")
        assert head.startswith(b"HTTP/1.1 503 ")
        refused.close()

        raw, head = connect_through(sock_path, "10.96.0.20:443")
        assert head == b"HTTP/1.1 200 Connection established\r\n\r\n"
        ctx = ssl.create_default_context(cafile=str(ca_crt))
        tls = ctx.wrap_socket(raw, server_hostname="istiod-1-15-4.istio-system.svc")
        conn = http.client.HTTPConnection("istiod-1-15-4.istio-system.svc", 443)
        conn.sock = tls
        the_pod = pod(
            labels={"app": "bar", "pod-template-hash": "5d8f7c9b6"}, ownerReferences=[RS_OWNER]
        )
        # Two calls on one kept-alive connection, in both versions Istio's webhooks declare.
        for version in ("admission.k8s.io/v1beta1", "admission.k8s.io/v1"):
            conn.request(
                "POST",
                "/inject/cluster/Kubernetes/net/network1",
                body=review(the_pod, version),
                headers={"Content-Type": "application/json"},
            )
            resp = conn.getresponse()
            assert resp.status == 200
            answer = json.loads(resp.read())
            assert answer["apiVersion"] == version
            assert answer["response"]["uid"] == "u-1"
            injected = apply_patch(
                the_pod, json.loads(base64.b64decode(answer["response"]["patch"]))
            )
            assert injected["spec"]["containers"][-1] == {
                "name": "istio-proxy",
                "image": IMAGE,
                "args": ["proxy", "sidecar"],
                "volumeMounts": [{"name": "istio-envoy", "mountPath": "/etc/istio/proxy"}],
            }
            status = json.loads(injected["metadata"]["annotations"]["sidecar.istio.io/status"])
            assert status["revision"] == "1-15-4"
            assert injected["metadata"]["labels"]["service.istio.io/canonical-name"] == "bar"

        conn.request("POST", "/inject", body=b"{oops", headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 400
        assert b"not JSON" in resp.read()

        server.image = "h/proxyv2:next"  # what the reconciler does when the ConfigMap changes
        conn.request("POST", "/inject", body=review(the_pod))
        answer = json.loads(conn.getresponse().read())
        ops = json.loads(base64.b64decode(answer["response"]["patch"]))
        assert apply_patch(the_pod, ops)["spec"]["containers"][-1]["image"] == "h/proxyv2:next"
        conn.close()

        # The name the apiserver verifies must be in the certificate: another name fails.
        raw, head = connect_through(sock_path, "10.96.0.20:443")
        with pytest.raises(ssl.SSLCertVerificationError):
            ctx.wrap_socket(raw, server_hostname="istiod-1-14-6.istio-system.svc")
        raw.close()
    finally:
        proxy.stop()
        server.stop()
    assert not sock_path.exists()
    assert pem.read_bytes() == cached, "a valid cached certificate is reused, not remade"


def test_cached_certificate_from_another_ca_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = make_ca(tmp_path / "a")
    second = make_ca(tmp_path / "b")
    pem = ensure_cert(tmp_path / "certs", "1-14-6", *first)
    old = pem.read_bytes()
    assert ensure_cert(tmp_path / "certs", "1-14-6", *second) == pem
    assert pem.read_bytes() != old
    subprocess.run(
        ["openssl", "verify", "-CAfile", str(second[0]), str(pem)], check=True, capture_output=True
    )


def test_process_waits_for_the_apiserver_and_stops_on_sigterm(
    tmp_path: Path, short_tmp: Path
) -> None:
    """With no apiserver it must not look ready (no socket), and SIGTERM ends it cleanly."""
    make_ca(tmp_path)
    sock_path = short_tmp / "egress.sock"
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sandbox.injector",
            "--server",
            f"https://127.0.0.1:{port}",
            "--pki",
            str(tmp_path),
            "--socket",
            str(sock_path),
            "--workdir",
            str(tmp_path / "work"),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        deadline = time.monotonic() + 10
        lines: list[str] = []
        while time.monotonic() < deadline and not any("action=error" in line for line in lines):
            lines.append(proc.stdout.readline())  # type: ignore[union-attr]
        assert "action=start" in lines[0]
        assert any("what=list-configmaps" in line for line in lines), lines
        assert not sock_path.exists()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "action=shutdown signal=SIGTERM" in out
    assert out.rstrip().endswith("action=stopped")
    assert not sock_path.exists()
