"""Every Kubernetes call has a timeout: a server that accepts and never answers (a half-open
connection, a hung apiserver) fails the call instead of hanging the task or trigger."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from istio_upgrade import cluster


@pytest.fixture
def silent_server() -> Iterator[int]:
    """Accepts connections and never sends a byte."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


def test_a_call_without_its_own_timeout_gets_the_default(
    silent_server: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "https://127.0.0.1:{silent_server}",
  insecure-skip-tls-verify: true}}}}]
users: [{{name: u, user: {{token: t}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
current-context: x
"""
    )
    monkeypatch.setattr(cluster, "REQUEST_TIMEOUT", 0.5)
    kube = cluster.connect(cluster.KubeTarget(kubeconfig=str(kubeconfig)))
    kube.api.configuration.retries = 0  # one attempt: the timeout itself is under test
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            kube.core.list_namespace()  # no _request_timeout of its own
        except BaseException as error:  # noqa: BLE001 - whatever it raises is the outcome
            outcome.append(error)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    caller.join(timeout=30)
    assert not caller.is_alive(), "the call hung on a server that never answers"
    assert outcome and isinstance(outcome[0], cluster.api_errors())
