"""Operator routes under ``/api/admin``: user tokens are refused, every action is audited.

Operators reach every tenant for support; what they delete goes exactly as if its owner had
deleted it, and the credentials that reached it stop working at once.
"""

from __future__ import annotations

from quart import Quart, Response
from quart_schema import tag, validate_querystring, validate_request, validate_response

from ._audit_models import AdminAuditQuery, AuditEntryOut, AuditPage, after_seq, seq_cursor
from ._auth import Guard, errors
from ._models import (
    AdminDeviceQuery,
    AdminKeyQuery,
    AdminNetworkQuery,
    DeviceList,
    DeviceOut,
    DevicePage,
    EnrollmentKeyPage,
    NetworkIn,
    NetworkInfoOut,
    NetworkInfoPage,
    UserDetailOut,
    UserOut,
    UserPage,
    UserQuery,
    convert,
)
from ._openapi import no_content


def install(app: Quart, guard: Guard) -> None:
    def revoke_all(at: int, subjects: list[str]) -> None:
        for subject in subjects:
            guard.revoke(subject, at)

    # ------------------------------------------------------------------- users

    @app.get("/api/admin/users")
    @tag(["admin"])
    @validate_querystring(UserQuery)
    @validate_response(UserPage, 200)
    @errors(403, 422, 503)
    async def find_users(query_args: UserQuery) -> UserPage:
        """Users, oldest first: ``q`` finds part of an e-mail address (any case) or a whole user
        id, ``email`` a whole address; ``status`` filters (by default: not deleted)."""
        principal = guard.principal()
        page = await guard.domain().operators.list_users(
            principal.scope,
            search=query_args.q,
            email=query_args.email,
            status=query_args.status,
            cursor=query_args.cursor,
            limit=query_args.limit,
        )
        return convert(page, UserPage)  # type: ignore[no-any-return]

    @app.get("/api/admin/users/<user_id>")
    @tag(["admin"])
    @validate_response(UserDetailOut, 200)
    @errors(403, 404, 503)
    async def admin_show_user(user_id: str) -> UserDetailOut:
        """A user with their networks and devices, for support."""
        principal = guard.principal()
        detail = await guard.domain().operators.user_detail(principal.scope, user_id)
        return convert(detail, UserDetailOut)  # type: ignore[no-any-return]

    @app.delete("/api/admin/users/<user_id>")
    @tag(["admin"])
    @no_content
    @errors(403, 404, 503)
    async def admin_delete_user(user_id: str) -> Response:
        """Delete an account as its owner would: devices, networks, sign-ins and keys go, the
        account becomes a pseudonym, every token stops working at once."""
        principal = guard.principal()
        at, revoked = await guard.domain().operators.delete_user(principal.scope, user_id)
        revoke_all(at, revoked)
        return Response(b"", status=204)

    @app.post("/api/admin/users/<user_id>/suspend")
    @tag(["admin"])
    @validate_response(UserOut, 200)
    @errors(403, 404, 503)
    async def suspend(user_id: str) -> UserOut:
        """Suspend a user: every token of theirs (their devices' too) stops working at once, their
        device sessions end, and they cannot sign in until reactivated."""
        principal = guard.principal()
        user, at = await guard.domain().operators.set_status(principal.scope, user_id, "suspended")
        guard.revoke(f"user:{user_id}", at)
        return convert(user, UserOut)  # type: ignore[no-any-return]

    @app.post("/api/admin/users/<user_id>/reactivate")
    @tag(["admin"])
    @validate_response(UserOut, 200)
    @errors(403, 404, 503)
    async def reactivate(user_id: str) -> UserOut:
        principal = guard.principal()
        user, _ = await guard.domain().operators.set_status(principal.scope, user_id, "active")
        return convert(user, UserOut)  # type: ignore[no-any-return]

    @app.get("/api/admin/users/<user_id>/devices")
    @tag(["admin"])
    @validate_response(DeviceList, 200)
    @errors(403, 404, 503)
    async def user_devices(user_id: str) -> DeviceList:
        """A user's devices, for support."""
        principal = guard.principal()
        devices = await guard.domain().operators.user_devices(principal.scope, user_id)
        return DeviceList([convert(d, DeviceOut) for d in devices])

    # ------------------------------------------------------------------- devices

    @app.get("/api/admin/devices")
    @tag(["admin"])
    @validate_querystring(AdminDeviceQuery)
    @validate_response(DevicePage, 200)
    @errors(403, 422, 503)
    async def admin_list_devices(query_args: AdminDeviceQuery) -> DevicePage:
        """Devices of every network by network and id, or of one user, one network, or with one
        id."""
        principal = guard.principal()
        page = await guard.domain().operators.list_devices(
            principal.scope,
            user_id=query_args.user_id,
            network_id=query_args.network_id,
            device_id=query_args.device_id,
            cursor=query_args.cursor,
            limit=query_args.limit,
        )
        return convert(page, DevicePage)  # type: ignore[no-any-return]

    @app.get("/api/admin/networks/<network_id>/devices/<device_id>")
    @tag(["admin"])
    @validate_response(DeviceOut, 200)
    @errors(403, 404, 503)
    async def admin_show_device(network_id: str, device_id: str) -> DeviceOut:
        principal = guard.principal()
        device = await guard.domain().operators.get_device(principal.scope, network_id, device_id)
        return convert(device, DeviceOut)  # type: ignore[no-any-return]

    @app.delete("/api/admin/networks/<network_id>/devices/<device_id>")
    @tag(["admin"])
    @no_content
    @errors(403, 404, 503)
    async def admin_delete_device(network_id: str, device_id: str) -> Response:
        """Delete a device as its user would: its tokens stop working, its session ends."""
        principal = guard.principal()
        at, revoked = await guard.domain().operators.delete_device(
            principal.scope, network_id, device_id
        )
        revoke_all(at, revoked)
        return Response(b"", status=204)

    # ------------------------------------------------------------------- networks

    @app.get("/api/admin/networks")
    @tag(["admin"])
    @validate_querystring(AdminNetworkQuery)
    @validate_response(NetworkInfoPage, 200)
    @errors(403, 422, 503)
    async def admin_list_networks(query_args: AdminNetworkQuery) -> NetworkInfoPage:
        """Every network, oldest first, with its owner and member count; or one user's."""
        principal = guard.principal()
        page = await guard.domain().operators.list_networks(
            principal.scope,
            user_id=query_args.user_id,
            cursor=query_args.cursor,
            limit=query_args.limit,
        )
        return convert(page, NetworkInfoPage)  # type: ignore[no-any-return]

    @app.get("/api/admin/networks/<network_id>")
    @tag(["admin"])
    @validate_response(NetworkInfoOut, 200)
    @errors(403, 404, 503)
    async def admin_show_network(network_id: str) -> NetworkInfoOut:
        principal = guard.principal()
        network = await guard.domain().operators.get_network(principal.scope, network_id)
        return convert(network, NetworkInfoOut)  # type: ignore[no-any-return]

    @app.put("/api/admin/networks/<network_id>")
    @tag(["admin"])
    @validate_request(NetworkIn)
    @validate_response(NetworkInfoOut, 200)
    @errors(400, 403, 404, 413, 422, 503)
    async def admin_rename_network(network_id: str, data: NetworkIn) -> NetworkInfoOut:
        principal = guard.principal()
        network = await guard.domain().operators.rename_network(
            principal.scope, network_id, data.name
        )
        return convert(network, NetworkInfoOut)  # type: ignore[no-any-return]

    @app.delete("/api/admin/networks/<network_id>")
    @tag(["admin"])
    @no_content
    @errors(403, 404, 409, 503)
    async def admin_delete_network(network_id: str) -> Response:
        """Delete a network as its owner would, with its devices (their sessions end); a user's
        home network is deleted only with the account (409 ``home_network``)."""
        principal = guard.principal()
        at, revoked = await guard.domain().operators.delete_network(principal.scope, network_id)
        revoke_all(at, revoked)
        return Response(b"", status=204)

    # ------------------------------------------------------------------- enrolment keys

    @app.get("/api/admin/enrollment-keys")
    @tag(["admin"])
    @validate_querystring(AdminKeyQuery)
    @validate_response(EnrollmentKeyPage, 200)
    @errors(403, 422, 503)
    async def admin_list_enrollment_keys(query_args: AdminKeyQuery) -> EnrollmentKeyPage:
        """Enrolment keys (never their secrets), oldest first."""
        principal = guard.principal()
        page = await guard.domain().operators.list_enrollment_keys(
            principal.scope,
            user_id=query_args.user_id,
            network_id=query_args.network_id,
            usable=query_args.usable,
            cursor=query_args.cursor,
            limit=query_args.limit,
        )
        return convert(page, EnrollmentKeyPage)  # type: ignore[no-any-return]

    @app.delete("/api/admin/enrollment-keys/<key_id>")
    @tag(["admin"])
    @no_content
    @errors(403, 404, 409, 503)
    async def admin_revoke_enrollment_key(key_id: str) -> Response:
        """Revoke a key: it can no longer be redeemed (409 ``key_used`` if it already was)."""
        principal = guard.principal()
        await guard.domain().operators.revoke_enrollment_key(principal.scope, key_id)
        return Response(b"", status=204)

    # ------------------------------------------------------------------- the audit log

    @app.get("/api/admin/audit")
    @tag(["admin"])
    @validate_querystring(AdminAuditQuery)
    @validate_response(AuditPage, 200)
    @errors(403, 422, 503)
    async def admin_audit(query_args: AdminAuditQuery) -> AuditPage:
        """Everyone's audit entries with their hashes, oldest first, filtered by ``actor``,
        ``subject``, ``action`` (or a prefix ending in a dot) and time; the read is audited."""
        principal = guard.principal()
        store = guard.domain().store
        entries = await store.audit_log.search(
            actor=query_args.actor,
            subject=query_args.subject,
            action=query_args.action,
            since=query_args.since,
            until=query_args.until,
            after=after_seq(query_args.cursor),
            limit=query_args.limit + 1,
        )
        more = len(entries) > query_args.limit
        entries = entries[: query_args.limit]
        await store.audit(principal.user_id, "admin.read_audit", "", {"found": len(entries)})
        return AuditPage(
            [convert(entry, AuditEntryOut) for entry in entries],
            seq_cursor(entries[-1].seq) if more else None,
        )
