"""Airflow's local-settings hook (found on PYTHONPATH): warms the processes that fork tasks.

Airflow 3 runs every try in a process forked from a LocalExecutor or Celery worker, and
that process imports what the task needs afresh. The Kubernetes client (1,000+ model
classes, about 1.8 s of CPU here) is by far the largest of those imports, and about 15
tasks of the upgrade use it, one after another. Imported once in the scheduler (whose
LocalExecutor workers it forks) and in the Celery worker, every task process inherits it.

Other Airflow processes (api-server, dag-processor, the CLI) import this module too and
skip the import: the DAG file must stay cheap to parse.
"""

from __future__ import annotations

import sys

__all__: list[str] = []  # Airflow reads every public name here as a cluster policy

# argv[1] of `airflow scheduler` (also what `airflow standalone` starts) and
# `airflow celery worker`.
TASK_FORKING_COMMANDS = frozenset({"scheduler", "celery"})

if sys.argv[1:2] and sys.argv[1] in TASK_FORKING_COMMANDS:
    import kubernetes.client  # noqa: F401
