"""Container runtime stand-in for istioctl pods: stands in for what a node does with a pod.

kwok plays the kubelet: it moves pods through their phases but runs no container. For pods
of the official istioctl image (`<registry>/istio/istioctl:<version>`) this process does the
node's remaining part, as the in-cluster istioctl runner (include/istio_upgrade/
istioctl_pod.py) needs it:

- runs the image's entrypoint, the istioctl of that version that sandbox/build.sh built,
  with the pod's arguments and the pod's ServiceAccount credentials (a token from the
  TokenRequest API, as the kubelet mounts one), so RBAC is the real apiserver's;
- records the exit code in the annotation `sandbox.istio-canary-upgrade/exit-code`, which the
  sandbox's kwok stage `pod-exit` turns into the container's terminated state and the pod's
  phase (kwok stays the only writer of pod status);
- serves the kubelet's `/containerLogs/<namespace>/<pod>/<container>` over HTTPS on the
  nodes' kubelet port, so the API's pods/log (and `kubectl logs`) returns what istioctl
  printed.

An image whose version was not built is reported as a node reports an image it cannot pull:
the annotation says ImagePullBackOff and the stage puts the pod back to Pending, waiting.

Usage: python3 -m sandbox.runtime --server URL --pki DIR --cache DIR --workdir DIR
           --listen 127.0.0.1:20250
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import ssl
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sandbox.kubeapi import ApiError, KubeApi, from_files
from sandbox.service import serve_and_poll

log = logging.getLogger("sandbox.runtime")

POLL_SECONDS = 0.5
EXIT_ANNOTATION = "sandbox.istio-canary-upgrade/exit-code"
IMAGE_MISSING = "ImagePullBackOff"
IMAGE = re.compile(r"(?:^|/)istio/istioctl:(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]*)$")
LOG_PATH = re.compile(r"^/containerLogs/(?P<ns>[^/]+)/(?P<pod>[^/]+)/(?P<container>[^/]+)$")
DEFAULT_DEADLINE = 900
TOKEN_SECONDS = 3600


def istioctl_tag(pod: dict[str, Any]) -> str | None:
    """The image tag when the pod's only container is the istioctl image, else None."""
    containers = pod.get("spec", {}).get("containers", [])
    if len(containers) != 1:
        return None
    match = IMAGE.search(containers[0].get("image", ""))
    return match["tag"] if match else None


def needs_run(pod: dict[str, Any]) -> bool:
    """Running (kwok started the container), not deleted, and no exit recorded yet."""
    meta = pod.get("metadata", {})
    return (
        pod.get("status", {}).get("phase") == "Running"
        and "deletionTimestamp" not in meta
        and EXIT_ANNOTATION not in (meta.get("annotations") or {})
        and istioctl_tag(pod) is not None
    )


def find_binary(cache: Path, tag: str) -> Path | None:
    """The built istioctl for an image tag: `1.32.0` finds `istioctl-1.32.0-dev/istioctl`."""
    matches = sorted(cache.glob(f"istioctl-{tag}*/istioctl"))
    return matches[-1] if matches else None


def kubeconfig(server: str, ca_file: str, token: str) -> str:
    """A kubeconfig holding a ServiceAccount token, as in-cluster config would build it."""
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "sandbox", "cluster": {"server": server, "certificate-authority": ca_file}}
            ],
            "users": [{"name": "pod", "user": {"token": token}}],
            "contexts": [{"name": "pod", "context": {"cluster": "sandbox", "user": "pod"}}],
            "current-context": "pod",
        }
    )


class Runtime:
    """Runs each istioctl pod once and keeps its output where the log endpoint finds it."""

    def __init__(self, api: KubeApi, cache: Path, workdir: Path) -> None:
        self.api = api
        self.cache = cache
        self.workdir = workdir
        self._started: set[str] = set()
        self._lock = threading.Lock()

    def log_file(self, namespace: str, pod: str, container: str) -> Path:
        return self.workdir / "logs" / namespace / pod / f"{container}.log"

    def poll(self) -> None:
        """One pass; an unreachable apiserver is logged and tried again on the next."""
        try:
            self.tick()
        except (ApiError, OSError) as err:
            log.warning("poll: %s", err)

    def tick(self) -> None:
        pods = self.api.get("/api/v1/pods", fieldSelector="status.phase=Running")["items"]
        for pod in pods:
            uid = pod["metadata"]["uid"]
            with self._lock:
                if not needs_run(pod) or uid in self._started:
                    continue
                self._started.add(uid)
            threading.Thread(target=self._run, args=(pod,), daemon=True).start()

    def _run(self, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        ns, name = meta["namespace"], meta["name"]
        container = spec["containers"][0]
        binary = find_binary(self.cache, istioctl_tag(pod) or "")
        out = self.log_file(ns, name, container["name"])
        out.parent.mkdir(parents=True, exist_ok=True)
        if binary is None:
            log.info(
                "pod=%s/%s image=%s not built: %s", ns, name, container["image"], IMAGE_MISSING
            )
            self._exit(ns, name, IMAGE_MISSING)
            return
        home = self.workdir / "pods" / meta["uid"]
        home.mkdir(parents=True, exist_ok=True)
        try:
            token = self._token(ns, spec.get("serviceAccountName", "default"), name, meta["uid"])
        except ApiError as err:
            # A kubelet cannot start a pod whose token it cannot get; it retries, as we do.
            log.warning("pod=%s/%s token: %s", ns, name, err)
            with self._lock:
                self._started.discard(meta["uid"])
            return
        (home / "kubeconfig").write_text(kubeconfig(self.api.server, self.api.ca_file, token))
        argv = [str(binary), *container.get("command", [])[1:], *container.get("args", [])]
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(home),
            "KUBECONFIG": str(home / "kubeconfig"),
        }
        log.info("pod=%s/%s run=%s", ns, name, " ".join(argv))
        with out.open("wb") as sink:
            try:
                done = subprocess.run(
                    argv,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    cwd=home,
                    timeout=spec.get("activeDeadlineSeconds", DEFAULT_DEADLINE),
                )
                code = done.returncode
            except subprocess.TimeoutExpired:
                code = 137  # what a container killed at its deadline reports
        shutil.rmtree(home, ignore_errors=True)  # its token goes with the container
        log.info("pod=%s/%s exit=%d", ns, name, code)
        self._exit(ns, name, str(code))

    def _token(self, namespace: str, account: str, pod: str, uid: str) -> str:
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": TOKEN_SECONDS,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": uid},
            },
        }
        path = f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token"
        return str(self.api.request("POST", path, request)["status"]["token"])

    def _exit(self, namespace: str, pod: str, value: str) -> None:
        """Record the exit code (or IMAGE_MISSING) for kwok's pod-exit stage."""
        patch = {"metadata": {"annotations": {EXIT_ANNOTATION: value}}}
        try:
            self.api.merge_patch(f"/api/v1/namespaces/{namespace}/pods/{pod}", patch)
        except ApiError as err:
            if err.status != 404:  # deleted while it ran: nothing left to report to
                raise


class _LogHandler(BaseHTTPRequestHandler):
    server: LogServer

    def do_GET(self) -> None:
        match = LOG_PATH.match(urlsplit(self.path).path)
        if match is None:
            self._send(404, b"only /containerLogs/<namespace>/<pod>/<container> is served\n")
            return
        path = self.server.runtime.log_file(match["ns"], match["pod"], match["container"])
        try:
            body = path.read_bytes()
        except FileNotFoundError:
            self._send(404, f"no log for {match['ns']}/{match['pod']}\n".encode())
            return
        self._send(200, body)

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.info("http %s", format % args)


class LogServer(ThreadingHTTPServer):
    """The kubelet's log endpoint, HTTPS with a certificate from the sandbox CA."""

    daemon_threads = True

    def __init__(self, listen: tuple[str, int], runtime: Runtime, pki: Path) -> None:
        super().__init__(listen, _LogHandler)
        self.runtime = runtime
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pki / "kubelet.crt", pki / "kubelet.key")
        self.socket = ctx.wrap_socket(self.socket, server_side=True)


def main(argv: list[str] | None = None) -> int:
    """Poll for istioctl pods in the main thread, serve logs beside it, until SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python3 -m sandbox.runtime", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--server", required=True, help="apiserver URL")
    parser.add_argument("--pki", required=True, type=Path, help="folder with the sandbox certs")
    parser.add_argument("--cache", required=True, type=Path, help="sandbox/build.sh's cache")
    parser.add_argument("--workdir", required=True, type=Path, help="logs and pod homes")
    parser.add_argument("--listen", required=True, help="host:port of the log endpoint")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s runtime %(levelname)s %(message)s")
    host, _, port = args.listen.rpartition(":")
    runtime = Runtime(from_files(args.server, str(args.pki)), args.cache, args.workdir)
    server = LogServer((host, int(port)), runtime, args.pki)
    log.info("listening on https://%s containerLogs; cache=%s", args.listen, args.cache)
    serve_and_poll(server, runtime.poll, POLL_SECONDS, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
