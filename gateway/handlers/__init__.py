"""HTTP handlers, one module per resource of the API; `gateway/routes.py` binds them."""
