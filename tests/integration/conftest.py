"""Integration tests run against the real sandbox cluster, shared by the whole session."""

from __future__ import annotations

from sandbox_fixture import Sandbox, sandbox

__all__ = ["Sandbox", "sandbox"]
