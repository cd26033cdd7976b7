"""Tests under a real Airflow (`airflow standalone`) and its UI: fixtures in
standalone_stack.py."""

from __future__ import annotations

from standalone.standalone_stack import browser_context, page, stack, ui_run

__all__ = ["browser_context", "page", "stack", "ui_run"]
