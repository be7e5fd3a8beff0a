"""The host agent's HTTP routes."""
