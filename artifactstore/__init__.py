"""Shared plumbing of the Artifact Store mesh: configuration, telemetry, gRPC bootstrap,
the supervisor and CLI, and the OCI helpers (digests, names, manifests) every service uses.

The code generated from protos/ lands in the subpackages artifactstore.<svc>.v1.
"""

__version__ = "0.1.0"
