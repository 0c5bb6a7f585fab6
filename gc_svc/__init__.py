"""gc_svc: garbage collection. Today it serves health checking, reflection and its service info."""
