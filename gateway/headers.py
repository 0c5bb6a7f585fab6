"""Names of the registry-specific HTTP headers the gateway sends."""

API_VERSION = "Docker-Distribution-API-Version"
CONTENT_DIGEST = "Docker-Content-Digest"
UPLOAD_UUID = "Docker-Upload-UUID"
OCI_SUBJECT = "OCI-Subject"
OCI_FILTERS_APPLIED = "OCI-Filters-Applied"
