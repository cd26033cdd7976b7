"""Istio control-plane canary upgrade: the logic behind the DAG, testable without Airflow."""
