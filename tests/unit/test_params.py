"""Run parameters: the Param table, the checks that need no cluster, and the cluster resolution."""

from __future__ import annotations

import json
import pickle
from dataclasses import fields
from typing import Any

import pytest

from istio_upgrade.errors import ParamError
from istio_upgrade.model import (
    ControlPlane,
    MeshSnapshot,
    NamespaceState,
    PodState,
    RevisionTag,
    WorkloadRef,
)
from istio_upgrade.params import (
    PARAM_SPECS,
    ResolvedParams,
    UpgradeParams,
    check_against_cluster,
    label_suggestion,
    parse_params,
    window_seconds,
)

OLD, NEW = "1-14-6", "1-15-4"
GATEWAY = WorkloadRef("Deployment", "istio-ingress", "istio-ingressgateway")


def namespace(name: str, labels: dict[str, str] | None = None, *deployments: str) -> NamespaceState:
    """A namespace following the default tag, with one Deployment (its own name) on OLD."""
    refs = tuple(WorkloadRef("Deployment", name, d) for d in deployments or (name,))
    pods = tuple(
        PodState(name, f"{w.name}-{i}", f"uid-{w.name}-{i}", "Running", w, OLD, "1.14.6")
        for w in refs
        for i in range(2)
    )
    return NamespaceState(
        name, {"istio.io/rev": "default"} if labels is None else labels, refs, pods
    )


def mesh(
    *extra: NamespaceState, planes: tuple[str, ...] = (OLD,), tag_rev: str = OLD
) -> MeshSnapshot:
    """The worked example of procedure.md: foo, bar, baz, qux and the ingress gateway on OLD."""
    namespaces = [namespace(n) for n in ("foo", "bar", "baz", "qux")]
    namespaces.append(namespace("istio-ingress", None, "istio-ingressgateway"))
    by_name = {n.name: n for n in [*namespaces, *extra]}
    return MeshSnapshot(
        control_planes=tuple(ControlPlane(r, True, r.replace("-", "."), True) for r in planes),
        tags=(RevisionTag("default", tag_rev),),
        namespaces=tuple(by_name[n] for n in sorted(by_name)),
        taken_at="2025-01-01T00:00:00+00:00",
    )


PINNED = namespace("pinned", {"istio.io/rev": OLD})  # follows a revision, not the tag


def parse(**overrides: Any) -> UpgradeParams:
    return parse_params({"target_revision": NEW, **overrides})


# -- the Param table --------------------------------------------------------------------------


def test_table_and_dataclass_declare_the_same_params_in_the_same_order() -> None:
    assert list(PARAM_SPECS) == [f.name for f in fields(UpgradeParams)]


# what airflow's Param passes on to jsonschema, plus its own UI keyword "section"
JSON_SCHEMA_KEYWORDS = {
    "default", "type", "title", "description", "pattern", "minLength", "maxLength", "minimum",
    "maximum", "exclusiveMinimum", "exclusiveMaximum", "enum", "items", "format", "examples",
    "uniqueItems", "section",
}  # fmt: skip


@pytest.mark.parametrize("name", list(PARAM_SPECS))
def test_spec_is_param_compatible_and_its_default_is_valid(name: str) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    kwargs = PARAM_SPECS[name].param_kwargs()
    assert set(kwargs) <= JSON_SCHEMA_KEYWORDS
    assert kwargs["title"] and len(kwargs["description"]) > 20
    schema = {k: v for k, v in kwargs.items() if k != "default"}
    # Airflow refuses a schedule when a default does not validate against its own schema
    jsonschema.validate(kwargs["default"], schema)
    json.dumps(kwargs)


def test_defaults_parse_into_the_documented_values() -> None:
    params = parse()
    assert params.tag == "default"
    assert params.gateways == ("istio-ingress/istio-ingressgateway",)
    assert params.gateway_refs == (GATEWAY,)
    assert (params.wave_concurrency, params.min_success_rate, params.max_p99_ms) == (2, 0.99, 500)
    assert params.istioctl_version == "1.15.4"


def test_params_round_trip_through_json() -> None:
    params = parse(canary_namespaces=["bar"], exclude_namespaces=["qux"])
    assert UpgradeParams.from_json(json.loads(json.dumps(params.to_json()))) == params


@pytest.mark.parametrize(
    ("overrides", "field", "expected"),
    [
        pytest.param({"current_revision": None}, "current_revision", "", id="null-is-default"),
        pytest.param({"target_revision": " 1-15-4 "}, "target_revision", NEW, id="stripped"),
        pytest.param({"bake_seconds": 60.0}, "bake_seconds", 60, id="integral-float-is-int"),
        pytest.param({"max_p99_ms": 250}, "max_p99_ms", 250.0, id="int-is-number"),
        pytest.param({"istioctl": "/opt/istioctl"}, "istioctl", "/opt/istioctl", id="path"),
        pytest.param({"istioctl": "istioctl"}, "istioctl", "istioctl", id="on-path"),
        pytest.param({"istioctl": "1.15.4"}, "istioctl", "1.15.4", id="matching-version"),
        pytest.param({"metric_window": "1m30s"}, "metric_window", "1m30s", id="compound-window"),
        pytest.param({"gateways": []}, "gateways", (), id="no-gateway"),
        pytest.param(
            {"prometheus_url": "http://prom:9090/"}, "prometheus_url", "http://prom:9090",
            id="url-trailing-slash",
        ),
        pytest.param(
            {"target_revision": "canary", "istioctl": "1.15.4"}, "target_revision", "canary",
            id="named-revision-with-version",
        ),
    ],
)  # fmt: skip
def test_accepted_inputs(overrides: dict[str, Any], field: str, expected: object) -> None:
    assert getattr(parse(**overrides), field) == expected


def test_message_reads_like_the_house_style() -> None:
    with pytest.raises(ParamError) as err:
        parse(target_revision="1.15.4")
    assert str(err.value) == (
        "param 'target_revision'='1.15.4' is not a DNS-1123 label; use e.g. '1-15-4'"
    )
    assert pickle.loads(pickle.dumps(err.value)).args == err.value.args


# Each case: the raw overrides, the param the message must name, and a piece of the fix.
BAD_INPUTS = [
    pytest.param({"target_revision": ""}, "target_revision", "'1-31-0'", id="target-missing"),
    pytest.param({"target_revision": "1.15.4"}, "target_revision", "'1-15-4'", id="target-dots"),
    pytest.param({"target_revision": "R1"}, "target_revision", "'r1'", id="target-uppercase"),
    pytest.param({"target_revision": "x" * 57}, "target_revision", "at most 56", id="target-long"),
    pytest.param({"current_revision": NEW}, "current_revision", "nothing to upgrade",
                 id="current-equals-target"),
    pytest.param({"current_revision": "1_14_6"}, "current_revision", "'1-14-6'",
                 id="current-underscores"),
    pytest.param({"tag": ""}, "tag", "'default'", id="tag-empty"),
    pytest.param({"tag": NEW}, "tag", "'default'", id="tag-is-target"),
    pytest.param({"canary_namespaces": ["Bar"]}, "canary_namespaces", "'bar'",
                 id="canary-uppercase"),
    pytest.param({"canary_namespaces": "bar"}, "canary_namespaces", "give a list",
                 id="canary-not-a-list"),
    pytest.param({"include_namespaces": ["foo", "foo"]}, "include_namespaces", "each entry once",
                 id="include-duplicate"),
    pytest.param({"canary_namespaces": ["bar"], "exclude_namespaces": ["bar"]},
                 "canary_namespaces", "drop 'bar'", id="canary-also-excluded"),
    pytest.param({"include_namespaces": ["foo"], "exclude_namespaces": ["foo"]},
                 "include_namespaces", "drop 'foo'", id="include-also-excluded"),
    pytest.param({"gateways": ["istio-ingressgateway"]}, "gateways",
                 "'istio-ingress/istio-ingressgateway'", id="gateway-without-namespace"),
    pytest.param({"gateways": ["a/b", "a/b"]}, "gateways", "each entry once",
                 id="gateway-duplicate"),
    pytest.param({"wave_concurrency": 0}, "wave_concurrency", "1 or more", id="waves-zero"),
    pytest.param({"wave_concurrency": True}, "wave_concurrency", "use e.g. 2", id="waves-bool"),
    pytest.param({"wave_concurrency": 1.5}, "wave_concurrency", "use e.g. 2",
                 id="waves-fraction"),
    pytest.param({"min_success_rate": 99}, "min_success_rate", "use e.g. 0.99",
                 id="rate-as-percent"),
    pytest.param({"min_success_rate": float("nan")}, "min_success_rate", "use e.g. 0.99",
                 id="rate-nan"),
    pytest.param({"max_p99_ms": 0}, "max_p99_ms", "use e.g. 500", id="p99-zero"),
    pytest.param({"bake_seconds": -1}, "bake_seconds", "0 or more", id="bake-negative"),
    pytest.param({"check_interval_seconds": 0}, "check_interval_seconds", "1 or more",
                 id="interval-zero"),
    pytest.param({"failure_limit": 0}, "failure_limit", "1 or more", id="failure-limit-zero"),
    pytest.param({"metric_window": "1 minute"}, "metric_window", "'90s'", id="window-words"),
    pytest.param({"metric_window": "30s1m"}, "metric_window", "largest first",
                 id="window-order"),
    pytest.param({"metric_window": "0m"}, "metric_window", "'1m'", id="window-zero"),
    pytest.param({"baseline_p99_ratio": 0.5}, "baseline_p99_ratio", "use e.g. 1.5",
                 id="baseline-ratio-below-one"),
    pytest.param({"rollout_timeout_seconds": 0}, "rollout_timeout_seconds", "1 or more",
                 id="rollout-timeout-zero"),
    pytest.param({"istioctl": "1.16.0"}, "istioctl", "'1.15.4'", id="istioctl-other-version"),
    pytest.param({"istioctl": "1.15"}, "istioctl", "full version", id="istioctl-short-version"),
    pytest.param({"target_revision": "canary"}, "istioctl", "binary path",
                 id="istioctl-unresolvable"),
    pytest.param({"install_overlay": "a.yaml\nb.yaml"}, "install_overlay", "give e.g.",
                 id="overlay-two-lines"),
    pytest.param({"dry_run": "yes"}, "dry_run", "JSON boolean", id="dry-run-string"),
    pytest.param({"kubernetes_conn_id": "my conn"}, "kubernetes_conn_id",
                 "'kubernetes_default'", id="conn-id-space"),
    pytest.param({"prometheus_url": "prometheus:9090"}, "prometheus_url", "http://",
                 id="url-without-scheme"),
    pytest.param({"prometheus_url": "http://p/api?x=1"}, "prometheus_url", "no query string",
                 id="url-with-query"),
    pytest.param({"bake_time": 60}, "bake_time", "did you mean 'bake_seconds'",
                 id="unknown-param"),
]  # fmt: skip


@pytest.mark.parametrize(("overrides", "param", "fix"), BAD_INPUTS)
def test_bad_input_names_the_param_and_the_fix(
    overrides: dict[str, Any], param: str, fix: str
) -> None:
    with pytest.raises(ParamError) as err:
        parse(**overrides)
    assert err.value.param == param
    assert str(err.value).startswith(f"param {param!r}=")
    assert fix in err.value.fix and fix in str(err.value), str(err.value)


@pytest.mark.parametrize(
    ("window", "seconds"),
    [
        pytest.param("1m", 60.0, id="minute"),
        pytest.param("90s", 90.0, id="seconds"),
        pytest.param("1h30m", 5400.0, id="compound"),
        pytest.param("500ms", 0.5, id="millis"),
        pytest.param("", None, id="empty"),
        pytest.param("1.5m", None, id="fraction"),
    ],
)
def test_window_seconds(window: str, seconds: float | None) -> None:
    assert window_seconds(window) == seconds


@pytest.mark.parametrize(
    ("typed", "suggested"),
    [
        pytest.param("1.15.4", "1-15-4", id="dots"),
        pytest.param("Istio_1.15", "istio-1-15", id="mixed"),
        pytest.param("...", "my-name", id="nothing-left"),
    ],
)
def test_label_suggestion(typed: str, suggested: str) -> None:
    assert label_suggestion(typed) == suggested


# -- check_against_cluster ----------------------------------------------------------------------


def test_worked_example_discovers_current_namespaces_and_canary() -> None:
    resolved = check_against_cluster(parse(), mesh())
    assert resolved.current_revision == OLD
    assert resolved.namespaces == ("bar", "baz", "foo", "istio-ingress", "qux")
    assert resolved.canary == ("bar",)
    assert (resolved.excluded, resolved.resumed) == ((), False)
    assert ResolvedParams.from_json(json.loads(json.dumps(resolved.to_json()))) == resolved


def test_resumed_run_finds_the_other_installed_revision() -> None:
    resolved = check_against_cluster(parse(), mesh(planes=(OLD, NEW), tag_rev=NEW))
    assert (resolved.current_revision, resolved.resumed) == (OLD, True)


@pytest.mark.parametrize(
    ("overrides", "extra", "namespaces", "canary", "excluded"),
    [
        pytest.param(
            {"exclude_namespaces": ["qux"]}, (), ("bar", "baz", "foo", "istio-ingress"),
            ("bar",), ("qux",), id="exclude",
        ),
        pytest.param(
            {"include_namespaces": ["foo", "baz"]}, (), ("baz", "foo"), ("baz",), (),
            id="include-sets-scope-and-canary",
        ),
        pytest.param(
            {"include_namespaces": ["foo"], "canary_namespaces": ["qux"]}, (), ("foo", "qux"),
            ("qux",), (), id="canary-joins-the-scope",
        ),
        pytest.param(
            {"include_namespaces": ["istio-ingress", "web"]},
            (namespace("web", {"istio-injection": "enabled"}),), ("istio-ingress", "web"),
            ("web",), (), id="gateway-namespace-passed-over-and-injection-enabled-follows-default",
        ),
        pytest.param(
            {}, (PINNED,),
            ("bar", "baz", "foo", "istio-ingress", "qux"), ("bar",), (),
            id="namespace-pinned-to-a-revision-is-not-in-scope",
        ),
    ],
)  # fmt: skip
def test_resolution(
    overrides: dict[str, Any],
    extra: tuple[NamespaceState, ...],
    namespaces: tuple[str, ...],
    canary: tuple[str, ...],
    excluded: tuple[str, ...],
) -> None:
    resolved = check_against_cluster(parse(**overrides), mesh(*extra))
    assert (resolved.namespaces, resolved.canary, resolved.excluded) == (
        namespaces,
        canary,
        excluded,
    )


def _nothing_follows_the_tag() -> MeshSnapshot:
    return MeshSnapshot(
        (ControlPlane(OLD, True, "1.14.6", True),),
        (RevisionTag("default", OLD),),
        (PINNED,),
        "2025-01-01T00:00:00+00:00",
    )


BAD_FOR_CLUSTER = [
    pytest.param({"tag": "stable"}, mesh(), "tag", "istioctl tag set stable", id="unknown-tag"),
    pytest.param({"current_revision": "1-13-0"}, mesh(), "current_revision", "leave it empty",
                 id="current-not-installed"),
    pytest.param({"current_revision": "1-13-0"}, mesh(planes=(OLD, "1-13-0")), "current_revision",
                 f"'{OLD}'", id="current-not-behind-the-tag"),
    pytest.param({}, mesh(planes=(NEW,), tag_rev=NEW), "target_revision", "newer target",
                 id="target-already-current"),
    pytest.param({}, mesh(planes=(OLD, NEW, "1-13-0"), tag_rev=NEW), "current_revision",
                 "set current_revision", id="current-ambiguous-on-resume"),
    pytest.param({}, mesh(planes=("1-13-0",)), "tag", "repair the tag",
                 id="tag-points-at-uninstalled-revision"),
    pytest.param({"canary_namespaces": ["nope"]}, mesh(), "canary_namespaces", "spelling",
                 id="canary-not-found"),
    pytest.param({"canary_namespaces": ["pinned"]}, mesh(PINNED), "canary_namespaces",
                 "istio.io/rev=default", id="canary-not-following-tag"),
    pytest.param({"include_namespaces": ["nope"]}, mesh(), "include_namespaces", "spelling",
                 id="include-unknown"),
    pytest.param({"include_namespaces": ["plain"]},
                 mesh(namespace("plain", {"istio-injection": "disabled"})),
                 "include_namespaces", "kubectl label namespace plain", id="include-not-meshed"),
    pytest.param({"exclude_namespaces": ["fooo"]}, mesh(), "exclude_namespaces", "spelling",
                 id="exclude-typo"),
    pytest.param({"gateways": ["ingress/istio-ingressgateway"]}, mesh(), "gateways",
                 "gateways to []", id="gateway-namespace-missing"),
    pytest.param({"gateways": ["istio-ingress/gw"]}, mesh(), "gateways", "use one of those",
                 id="gateway-deployment-missing"),
    pytest.param({"gateways": []}, _nothing_follows_the_tag(), "canary_namespaces",
                 "kubectl label namespace", id="nothing-follows-the-tag"),
    pytest.param({"exclude_namespaces": ["bar", "baz", "foo", "istio-ingress", "qux"]}, mesh(),
                 "canary_namespaces", "exclude_namespaces", id="everything-excluded"),
]  # fmt: skip


@pytest.mark.parametrize(("overrides", "snapshot", "param", "fix"), BAD_FOR_CLUSTER)
def test_cluster_mismatch_names_the_param_and_the_fix(
    overrides: dict[str, Any], snapshot: MeshSnapshot, param: str, fix: str
) -> None:
    with pytest.raises(ParamError) as err:
        check_against_cluster(parse(**overrides), snapshot)
    assert err.value.param == param
    assert str(err.value).startswith(f"param {param!r}=")
    assert fix in err.value.fix and fix in str(err.value), str(err.value)
