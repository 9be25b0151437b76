"""Images as sources and sinks: registries, OCI layouts, OCI archives, docker-archives.

See :mod:`derrick.images.model` for the protocols every kind implements.
"""
