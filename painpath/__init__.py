"""Painpath's command line and local tooling."""
