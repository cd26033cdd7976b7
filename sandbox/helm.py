"""A mesh installed with Istio's Helm charts, the way Istio documents it, for the sandbox's
`--installer helm` seed: the `base` chart (CRDs, the default revision's validator), one
`istiod-<revision>` release per revision, revision tags rendered from the istiod chart's
revision-tags templates and applied, as Istio's Helm upgrade guide does.

The charts are packaged per Istio version from the istio module by `sandbox/build.sh`.
"""

from __future__ import annotations

import subprocess

from sandbox.components import REPO, Layout, binary

ISTIO_NAMESPACE = "istio-system"
BASE_RELEASE = "istio-base"
HELM_RELEASE = "meta.helm.sh/release-name"  # the annotation Helm puts on what it installs
TAG_TEMPLATES = ("templates/revision-tags-mwc.yaml", "templates/revision-tags-svc.yaml")


def helm(layout: Layout, *args: str) -> str:
    cmd = [
        binary(layout, "helm", "helm"),
        f"--kubeconfig={layout.kubeconfig}",
        f"--namespace={ISTIO_NAMESPACE}",
        *args,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        raise RuntimeError(f"helm {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout


def chart(layout: Layout, which: str, name: str) -> str:
    """The packaged chart `name` (base, istiod, gateway) of the old or new Istio version."""
    return binary(layout, f"istio_charts_{which}", f"{name}.tgz")


def _image(version: str) -> list[str]:
    # the module's charts carry development placeholders for the image
    return ["--set", "global.hub=docker.io/istio", "--set", f"global.tag={version}"]


def set_base(layout: Layout, which: str, version: str, default_revision: str) -> None:
    """Install or upgrade the base chart, its validator on `default_revision`."""
    helm(
        layout,
        "upgrade",
        "--install",
        BASE_RELEASE,
        chart(layout, which, "base"),
        "--set",
        f"defaultRevision={default_revision}",
        *_image(version),
    )


def install_revision(layout: Layout, which: str, version: str, revision: str) -> None:
    helm(
        layout,
        "upgrade",
        "--install",
        f"istiod-{revision}",
        chart(layout, which, "istiod"),
        "--set",
        f"revision={revision}",
        *_image(version),
        "--wait",
        "--timeout=3m",
    )


def uninstall_revision(layout: Layout, revision: str) -> None:
    helm(layout, "uninstall", f"istiod-{revision}", "--wait")


def tag_manifest(layout: Layout, which: str, tag: str, revision: str) -> str:
    """The revision tag `tag` on `revision`, rendered from the istiod chart (applied by
    kubectl: Istio's guide keeps tags out of the istiod releases so a tag outlives them)."""
    shown = [a for t in TAG_TEMPLATES for a in ("-s", t)]
    return helm(
        layout,
        "template",
        "istiod",
        chart(layout, which, "istiod"),
        *shown,
        "--set",
        f"revisionTags={{{tag}}}",
        "--set",
        f"revision={revision}",
    )
