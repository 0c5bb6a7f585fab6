"""blob_svc: the content-addressed blob store behind artifactstore.blob.v1.BlobService."""
