"""Tests under a real Airflow; a package so that its stack is package-scoped (pytest
8 treats a plain folder's "package" fixtures as session-wide: the stack would idle, and
Playwright's event loop would stay running, through the tests after these)."""
