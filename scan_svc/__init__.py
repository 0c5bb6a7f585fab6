"""scan_svc: vulnerability scanning. Today: health checking, reflection, service info."""
