"""Which injection webhooks select a namespace, as the apiserver evaluates their selectors."""

from __future__ import annotations

import pytest

from istio_upgrade.errors import ClusterStateError
from istio_upgrade.injection import (
    Injector,
    LabelSelector,
    Requirement,
    check_one_injector,
    injecting,
)


def has(key: str, *values: str) -> Requirement:
    return Requirement(key, "In", values)


def lacks(key: str) -> Requirement:
    return Requirement(key, "DoesNotExist")


NOT_OPTED_OUT = LabelSelector((), (Requirement("sidecar.istio.io/inject", "NotIn", ("false",)),))


def revision_webhooks(configuration: str, rev: str) -> list[Injector]:
    """What istioctl writes for a revision or a tag (istio-sidecar-injector-<rev>,
    istio-revision-tag-<tag>), as read from the sandbox."""
    return [
        Injector(
            configuration,
            "rev.namespace.sidecar-injector.istio.io",
            LabelSelector((), (has("istio.io/rev", rev), lacks("istio-injection"))),
            NOT_OPTED_OUT,
        ),
        Injector(
            configuration,
            "rev.object.sidecar-injector.istio.io",
            LabelSelector((), (lacks("istio.io/rev"), lacks("istio-injection"))),
            LabelSelector((), (*NOT_OPTED_OUT.match_expressions, has("istio.io/rev", rev))),
        ),
    ]


def default_tag() -> list[Injector]:
    return [
        *revision_webhooks("istio-revision-tag-default", "default"),
        Injector(
            "istio-revision-tag-default",
            "namespace.sidecar-injector.istio.io",
            LabelSelector((), (has("istio-injection", "enabled"),)),
            NOT_OPTED_OUT,
        ),
    ]


MESH = [*default_tag(), *revision_webhooks("istio-sidecar-injector-1-31-0", "1-31-0")]
# A legacy injector of an install without revision, left beside the tag's webhook.
LEGACY = Injector(
    "istio-sidecar-injector",
    "namespace.sidecar-injector.istio.io",
    LabelSelector((), (has("istio-injection", "enabled"),)),
    NOT_OPTED_OUT,
)


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        pytest.param({"istio.io/rev": "default"}, ["istio-revision-tag-default"], id="tag"),
        pytest.param({"istio.io/rev": "1-31-0"}, ["istio-sidecar-injector-1-31-0"], id="rev"),
        pytest.param({"istio-injection": "enabled"}, ["istio-revision-tag-default"], id="legacy"),
        pytest.param(  # istio-injection wins over istio.io/rev, as in Istio
            {"istio-injection": "enabled", "istio.io/rev": "1-31-0"},
            ["istio-revision-tag-default"],
            id="both-labels",
        ),
        pytest.param({"istio-injection": "disabled"}, [], id="disabled"),
        pytest.param({}, [], id="unlabelled"),
    ],
)
def test_a_namespace_is_injected_by_what_its_labels_select(
    labels: dict[str, str], expected: list[str]
) -> None:
    assert injecting(MESH, labels) == expected


def test_selectors_follow_the_apiserver() -> None:
    assert LabelSelector().matches({"any": "thing"})  # none selects everything
    assert LabelSelector((("a", "1"),)).matches({"a": "1", "b": "2"})
    assert not LabelSelector((("a", "1"),)).matches({"a": "2"})
    assert Requirement("a", "NotIn", ("x",)).matches({})  # absent is not in
    assert Requirement("a", "Exists").matches({"a": ""})
    with pytest.raises(ValueError, match="Gt"):
        Requirement("a", "Gt", ("1",)).matches({"a": "2"})


def test_a_mesh_with_one_injector_per_namespace_passes() -> None:
    check_one_injector(
        MESH, {"foo": {"istio.io/rev": "default"}, "bar": {"istio-injection": "enabled"}}
    )


def test_a_legacy_injector_beside_the_tag_is_refused_naming_both() -> None:
    namespaces = {"foo": {"istio.io/rev": "default"}, "bar": {"istio-injection": "enabled"}}
    with pytest.raises(ClusterStateError) as err:
        check_one_injector([*MESH, LEGACY], namespaces)
    message = str(err.value)
    assert "bar: istio-revision-tag-default, istio-sidecar-injector" in message, message
    assert "foo" not in message, message  # foo follows istio.io/rev only: one injector
    assert "IST0139" in message and "nothing was changed" in message
