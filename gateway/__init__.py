"""The HTTP edge of the mesh: the OCI Distribution Specification v1.1 over aiohttp.

The gateway keeps no state of its own: every request becomes calls to metadata_svc and
blob_svc, so any number of gateways may run side by side. `routes.py` is the one table of
endpoints, `errors.py` the one place where failures become HTTP responses.
"""
