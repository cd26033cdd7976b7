"""What keeps a revision in use, and which of its users the run knew of before it started."""

from __future__ import annotations

from istio_upgrade.model import WorkloadRef
from istio_upgrade.references import KeptBy, User

GATEWAY = WorkloadRef("Deployment", "istio-ingress", "istio-ingressgateway")
KEPT = KeptBy(
    users=("tag prod-stable", "pod jobs/once", "namespace legacy (label istio.io/rev)"),
    namespaces=("istio-ingress", "legacy", "qux"),
)


def test_users_known_before_the_run_are_covered() -> None:
    assert KEPT.covers(User("tag", "prod-stable"))
    assert KEPT.covers(User("namespace", "legacy"))
    assert KEPT.covers(User("pod", "once", "jobs"))
    # an excluded namespace's pods come and go: covered by namespace, whatever their names
    assert KEPT.covers(User("pod", "web-7f9c-x2", "qux", WorkloadRef("Deployment", "qux", "web")))


def test_what_appeared_during_the_run_is_not() -> None:
    assert not KEPT.covers(User("tag", "canary"))
    assert not KEPT.covers(User("namespace", "new-team"))
    assert not KEPT.covers(User("pod", "stray", "jobs"))  # jobs is moved: only "once" was known
    # the gateway is moved by the run, even where its namespace's other pods are kept
    assert not KEPT.covers(User("pod", "gw-1", "istio-ingress", GATEWAY), moved=[GATEWAY])


def test_nothing_kept_is_false_and_describe_names_everything() -> None:
    assert not KeptBy() and KEPT
    assert KEPT.describe() == (
        "tag prod-stable, pod jobs/once, namespace legacy (label istio.io/rev), "
        "the pods of namespace istio-ingress, the pods of namespace legacy, "
        "the pods of namespace qux"
    )
