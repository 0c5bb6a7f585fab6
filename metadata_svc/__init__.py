"""metadata_svc: the registry's metadata service, sole owner of the KV store."""
