"""The IamService servicer: proto messages in, IamStore calls, proto messages out."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from artifactstore.iam.v1 import iam_pb2 as pb
from artifactstore.iam.v1 import iam_pb2_grpc
from metadata_svc.iam import AuditEntry, Binding, Caller, IamStore
from metadata_svc.kv import Transaction

Context = grpc.aio.ServicerContext


def _caller(message: pb.Caller) -> Caller:
    return Caller(message.principal, message.source)


def _binding(b: Binding) -> pb.Binding:
    return pb.Binding(scope=pb.Scope(kind=b.kind, name=b.name), principal=b.principal, role=b.role)


def _audit(e: AuditEntry) -> pb.AuditEntry:
    return pb.AuditEntry(
        at=e.at,
        principal=e.principal,
        source=e.source,
        action=e.action,
        target=e.target,
        detail=e.detail,
    )


def _user(r: dict[str, Any]) -> pb.User:
    return pb.User(name=r["name"], disabled=r["disabled"], created_at=r["created_at"])


def _key(r: dict[str, Any]) -> pb.Key:
    return pb.Key(
        key_id=r["key_id"],
        service_account=r["service_account"],
        public_key_pem=r["public_key_pem"],
        disabled=r["disabled"],
        created_at=r["created_at"],
    )


class IamServicer(iam_pb2_grpc.IamServiceServicer):
    """Answers IamService calls from the IAM store."""

    def __init__(
        self, store: IamStore, has_repositories: Callable[[Transaction, str], bool]
    ) -> None:
        self._store = store
        self._has_repositories = has_repositories

    async def Authenticate(
        self, request: pb.AuthenticateRequest, context: Context
    ) -> pb.AuthenticateResponse:
        principal, key_id = await self._store.authenticate(
            request.username, request.password, request.source
        )
        return pb.AuthenticateResponse(principal=principal, key_id=key_id)

    async def Authorize(
        self, request: pb.AuthorizeRequest, context: Context
    ) -> pb.AuthorizeResponse:
        granted, version = await self._store.authorize(
            request.principal, request.repository, list(request.actions), request.key_id
        )
        return pb.AuthorizeResponse(granted=granted, policy_version=version)

    async def CheckPrincipal(
        self, request: pb.CheckPrincipalRequest, context: Context
    ) -> pb.CheckPrincipalResponse:
        active = await self._store.check_principal(request.principal, request.key_id)
        return pb.CheckPrincipalResponse(active=active)

    async def WatchPolicy(
        self, request: pb.WatchPolicyRequest, context: Context
    ) -> AsyncIterator[pb.PolicyVersion]:
        version = await self._store.policy_version()
        yield pb.PolicyVersion(version=version)
        while True:
            version = await self._store.wait_for_change(version)
            yield pb.PolicyVersion(version=version)

    async def CreateOrganization(
        self, request: pb.CreateOrganizationRequest, context: Context
    ) -> pb.Organization:
        r = await self._store.create_organization(_caller(request.caller), request.name)
        return pb.Organization(name=r["name"], created_at=r["created_at"])

    async def ListOrganizations(
        self, request: pb.ListOrganizationsRequest, context: Context
    ) -> pb.ListOrganizationsResponse:
        found = await self._store.list_organizations()
        return pb.ListOrganizationsResponse(
            organizations=[
                pb.Organization(name=r["name"], created_at=r["created_at"]) for r in found
            ]
        )

    async def DeleteOrganization(
        self, request: pb.DeleteOrganizationRequest, context: Context
    ) -> pb.DeleteResponse:
        return pb.DeleteResponse(
            deleted=await self._store.delete_organization(_caller(request.caller), request.name)
        )

    async def CreateProject(self, request: pb.CreateProjectRequest, context: Context) -> pb.Project:
        r = await self._store.create_project(
            _caller(request.caller), request.organization, request.name
        )
        return pb.Project(
            name=r["name"], organization=r["organization"], created_at=r["created_at"]
        )

    async def ListProjects(
        self, request: pb.ListProjectsRequest, context: Context
    ) -> pb.ListProjectsResponse:
        found = await self._store.list_projects(request.organization)
        return pb.ListProjectsResponse(
            projects=[
                pb.Project(
                    name=r["name"], organization=r["organization"], created_at=r["created_at"]
                )
                for r in found
            ]
        )

    async def DeleteProject(
        self, request: pb.DeleteProjectRequest, context: Context
    ) -> pb.DeleteResponse:
        name = request.name
        deleted = await self._store.delete_project(
            _caller(request.caller), name, lambda tr: self._has_repositories(tr, name)
        )
        return pb.DeleteResponse(deleted=deleted)

    async def CreateUser(self, request: pb.CreateUserRequest, context: Context) -> pb.User:
        return _user(
            await self._store.create_user(_caller(request.caller), request.name, request.password)
        )

    async def ListUsers(
        self, request: pb.ListUsersRequest, context: Context
    ) -> pb.ListUsersResponse:
        return pb.ListUsersResponse(users=[_user(r) for r in await self._store.list_users()])

    async def DeleteUser(
        self, request: pb.DeleteUserRequest, context: Context
    ) -> pb.DeleteResponse:
        return pb.DeleteResponse(
            deleted=await self._store.delete_user(_caller(request.caller), request.name)
        )

    async def UpdateUser(self, request: pb.UpdateUserRequest, context: Context) -> pb.User:
        r = await self._store.update_user(
            _caller(request.caller),
            request.name,
            request.password if request.HasField("password") else None,
            request.disabled if request.HasField("disabled") else None,
        )
        return _user(r)

    async def CreateServiceAccount(
        self, request: pb.CreateServiceAccountRequest, context: Context
    ) -> pb.ServiceAccount:
        r = await self._store.create_service_account(
            _caller(request.caller), request.project, request.name
        )
        return pb.ServiceAccount(**r)

    async def ListServiceAccounts(
        self, request: pb.ListServiceAccountsRequest, context: Context
    ) -> pb.ListServiceAccountsResponse:
        found = await self._store.list_service_accounts(request.project)
        return pb.ListServiceAccountsResponse(
            service_accounts=[pb.ServiceAccount(**r) for r in found]
        )

    async def DeleteServiceAccount(
        self, request: pb.DeleteServiceAccountRequest, context: Context
    ) -> pb.DeleteResponse:
        return pb.DeleteResponse(
            deleted=await self._store.delete_service_account(_caller(request.caller), request.email)
        )

    async def CreateKey(self, request: pb.CreateKeyRequest, context: Context) -> pb.Key:
        return _key(
            await self._store.create_key(
                _caller(request.caller), request.service_account, request.public_key_pem
            )
        )

    async def ListKeys(self, request: pb.ListKeysRequest, context: Context) -> pb.ListKeysResponse:
        return pb.ListKeysResponse(
            keys=[_key(r) for r in await self._store.list_keys(request.service_account)]
        )

    async def UpdateKey(self, request: pb.UpdateKeyRequest, context: Context) -> pb.Key:
        return _key(
            await self._store.update_key(_caller(request.caller), request.key_id, request.disabled)
        )

    async def DeleteKey(self, request: pb.DeleteKeyRequest, context: Context) -> pb.DeleteResponse:
        return pb.DeleteResponse(
            deleted=await self._store.delete_key(_caller(request.caller), request.key_id)
        )

    async def Grant(self, request: pb.GrantRequest, context: Context) -> pb.Binding:
        b = request.binding
        binding = Binding(b.scope.kind, b.scope.name, b.principal, b.role)
        return _binding(await self._store.grant(_caller(request.caller), binding))

    async def Revoke(self, request: pb.RevokeRequest, context: Context) -> pb.DeleteResponse:
        deleted = await self._store.revoke(
            _caller(request.caller), request.scope.kind, request.scope.name, request.principal
        )
        return pb.DeleteResponse(deleted=deleted)

    async def ListBindings(
        self, request: pb.ListBindingsRequest, context: Context
    ) -> pb.ListBindingsResponse:
        found = await self._store.list_bindings(
            request.scope.kind, request.scope.name, request.principal
        )
        return pb.ListBindingsResponse(bindings=[_binding(b) for b in found])

    async def ListAudit(
        self, request: pb.ListAuditRequest, context: Context
    ) -> pb.ListAuditResponse:
        entries = await self._store.list_audit(request.limit, request.before)
        return pb.ListAuditResponse(entries=[_audit(e) for e in entries])

    async def RecordAudit(self, request: pb.AuditEntry, context: Context) -> pb.AuditEntry:
        entry = AuditEntry(
            request.at,
            request.principal,
            request.source,
            request.action,
            request.target,
            dict(request.detail),
        )
        return _audit(await self._store.record_audit(entry))
