"""derrick: talk to container image registries directly, no Docker daemon."""

__version__ = "0.1.0"
