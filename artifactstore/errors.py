"""Registry errors and how they cross gRPC.

Domain code raises `RegistryError` with an OCI Distribution error code as its reason. The
gRPC servers turn it into a status code plus a `google.rpc.ErrorInfo` (domain
"artifactstore"); clients turn such a status back into a `RegistryError`, so the gateway
needs only one table from reason to HTTP status (gateway/errors.py).
"""

from __future__ import annotations

import enum

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "artifactstore"


class Reason(enum.StrEnum):
    """OCI Distribution error codes (spec section "Error Codes"), plus the mesh's own."""

    BLOB_UNKNOWN = "BLOB_UNKNOWN"
    BLOB_UPLOAD_INVALID = "BLOB_UPLOAD_INVALID"
    BLOB_UPLOAD_UNKNOWN = "BLOB_UPLOAD_UNKNOWN"
    DIGEST_INVALID = "DIGEST_INVALID"
    MANIFEST_BLOB_UNKNOWN = "MANIFEST_BLOB_UNKNOWN"
    MANIFEST_INVALID = "MANIFEST_INVALID"
    MANIFEST_UNKNOWN = "MANIFEST_UNKNOWN"
    NAME_INVALID = "NAME_INVALID"
    NAME_UNKNOWN = "NAME_UNKNOWN"
    SIZE_INVALID = "SIZE_INVALID"
    UNAUTHORIZED = "UNAUTHORIZED"
    DENIED = "DENIED"
    UNSUPPORTED = "UNSUPPORTED"
    TOOMANYREQUESTS = "TOOMANYREQUESTS"
    # Not in the spec's table but used by registries for these cases.
    TAG_INVALID = "TAG_INVALID"
    MANIFEST_TOO_LARGE = "MANIFEST_TOO_LARGE"
    RANGE_INVALID = "RANGE_INVALID"
    PAGINATION_INVALID = "PAGINATION_INVALID"
    UNAVAILABLE = "UNAVAILABLE"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    # A severity that is not CRITICAL, HIGH, MEDIUM, LOW or UNKNOWN (scan filters, policies).
    SEVERITY_INVALID = "SEVERITY_INVALID"


# The gRPC status each reason travels with.
GRPC_CODES: dict[Reason, grpc.StatusCode] = {
    Reason.BLOB_UNKNOWN: grpc.StatusCode.NOT_FOUND,
    Reason.BLOB_UPLOAD_INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.BLOB_UPLOAD_UNKNOWN: grpc.StatusCode.NOT_FOUND,
    Reason.DIGEST_INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.MANIFEST_BLOB_UNKNOWN: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.MANIFEST_INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.MANIFEST_UNKNOWN: grpc.StatusCode.NOT_FOUND,
    Reason.NAME_INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.NAME_UNKNOWN: grpc.StatusCode.NOT_FOUND,
    Reason.SIZE_INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.UNAUTHORIZED: grpc.StatusCode.UNAUTHENTICATED,
    Reason.DENIED: grpc.StatusCode.PERMISSION_DENIED,
    Reason.UNSUPPORTED: grpc.StatusCode.UNIMPLEMENTED,
    Reason.TOOMANYREQUESTS: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.TAG_INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.MANIFEST_TOO_LARGE: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.RANGE_INVALID: grpc.StatusCode.OUT_OF_RANGE,
    Reason.PAGINATION_INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Reason.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    Reason.SEVERITY_INVALID: grpc.StatusCode.INVALID_ARGUMENT,
}


class RegistryError(Exception):
    """A failure a client must hear about, named by its OCI error code."""

    def __init__(self, reason: Reason, message: str, **detail: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.detail = detail

    @property
    def grpc_code(self) -> grpc.StatusCode:
        """The gRPC status code this error travels with."""
        return GRPC_CODES[self.reason]

    def to_status(self) -> grpc.Status:
        """The rich gRPC status (code, message, ErrorInfo) that carries this error."""
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN, metadata=self.detail)
        packed = any_pb2.Any()
        packed.Pack(info)
        status = status_pb2.Status(
            code=self.grpc_code.value[0], message=self.message, details=[packed]
        )
        return rpc_status.to_status(status)

    @classmethod
    def from_rpc_error(cls, err: grpc.aio.AioRpcError) -> RegistryError | None:
        """The RegistryError a failed call carried, or None if it carried no ErrorInfo."""
        status = rpc_status.from_call(err)  # type: ignore[arg-type]
        if status is None:
            return None
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info) and info.domain == DOMAIN:
                try:
                    reason = Reason(info.reason)
                except ValueError:
                    return None
                return cls(reason, status.message, **dict(info.metadata))
        return None


def offset_mismatch(upload_id: str, size: int, offset: int) -> RegistryError:
    """RANGE_INVALID for an append at `offset` to upload session `upload_id`, which holds
    `size` bytes."""
    return RegistryError(
        Reason.RANGE_INVALID,
        f"upload {upload_id} is at offset {size}, not {offset}",
        size=str(size),
    )
