"""Browser checks of the Airflow UI: fixtures in browser_stack.py (an importable module name)."""

from __future__ import annotations

from browser_stack import browser_context, page, ui_run

__all__ = ["browser_context", "page", "ui_run"]
