"""Tests on docker-compose.yaml's deployment run as processes: scripts/distributed_stack.py."""
