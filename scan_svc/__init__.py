"""scan_svc: vulnerability scanning. `server` assembles the ScanService (`service`) and the
scan queue's worker (`worker`), which pulls images through the gateway (`registry`, with
the account of `identity`), analyses them (`analyzers`: Trivy or the built-in `analysis`
library over the OSV database of `vulndb`) and writes Parquet `reports` to blob storage
(`storage`)."""
