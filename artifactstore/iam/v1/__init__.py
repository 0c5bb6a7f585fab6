"""Generated from protos/; regenerate with `make protos`."""
