"""Global locks over HTTP: acquire, renew and release for the users and devices of a network,
and a view of its locks for the network's owner and for operators.

The network is the one asked for (``network_id``), else the device token's own, else the
user's home network; a network the caller does not belong to answers 404, exactly like one that
does not exist, before any lock manager hears of it. The holder is the caller: ``device:<id>``
for a device's token, ``user:<id>`` for a user's.
"""

from __future__ import annotations

import msgspec
from quart import Quart, Response
from quart_schema import tag, validate_querystring, validate_request, validate_response

from yggdrasil import Forbidden, Invalid, Principal, Unavailable
from yggdrasil.locks import LOCK_REPLY_S, Granted, Locks, LockView
from yggdrasil.store import decode_cursor, encode_cursor

from ._auth import Guard, errors
from ._locks_models import (
    AcquireIn,
    AdminLockQuery,
    LockGrant,
    LockPage,
    LockPageQuery,
    LockQuery,
    ReleaseIn,
    RenewIn,
)
from ._openapi import no_content
from ._resources import _device_scope


def _holder(principal: Principal) -> str:
    if principal.device_id is not None:
        return f"device:{principal.device_id}"
    return f"user:{principal.user_id}"


def _grant(granted: Granted) -> LockGrant:
    return LockGrant(granted.name, granted.token, granted.lease_ms, granted.expires_at)


def _after(cursor: str | None) -> str | None:
    if cursor is None:
        return None
    after = decode_cursor(cursor)
    if after is None:
        raise Invalid("not a cursor of this list")
    return after


def _page(view: LockView) -> LockPage:
    return msgspec.convert(
        {
            "items": msgspec.to_builtins(view.items),
            "next_cursor": None if view.next_after is None else encode_cursor(view.next_after),
        },
        LockPage,
    )


def install(app: Quart, guard: Guard, locks: Locks | None, *, response_timeout_s: float) -> None:
    max_wait_ms = max(0, int((response_timeout_s - LOCK_REPLY_S) * 1000))

    def service() -> Locks:
        if locks is None:
            raise Unavailable("locks are not served here")
        return locks

    async def network_of(network_id: str | None) -> tuple[Principal, str, str]:
        """The caller, the network (checked: the caller belongs to it) and their role."""
        principal, domain, chosen = await _device_scope(guard, network_id)
        network = await domain.store.get_network(principal.scope, chosen)
        return principal, chosen, network.role

    @app.post("/api/v1/locks/acquire")
    @tag(["locks"])
    @validate_querystring(LockQuery)
    @validate_request(AcquireIn)
    @validate_response(LockGrant, 200)
    @errors(400, 404, 409, 413, 422, 503)
    async def acquire_lock(query_args: LockQuery, data: AcquireIn) -> LockGrant:
        """Acquire a lock of the network for ``lease_ms``; with ``wait_ms``, wait for it while
        it is held (409 ``timeout`` when the wait runs out, 409 ``deadlock`` when the wait
        would close a cycle of waits and is the one chosen to break it). Asked again by its
        holder, a held lock answers its current grant."""
        if data.wait_ms > max_wait_ms:
            raise Invalid(f"wait_ms is at most {max_wait_ms} over HTTP")
        principal, network_id, _ = await network_of(query_args.network_id)
        granted = await service().acquire(
            network_id,
            _holder(principal),
            data.name,
            lease_ms=data.lease_ms,
            priority=data.priority,
            wait_ms=data.wait_ms,
        )
        return _grant(granted)

    @app.post("/api/v1/locks/renew")
    @tag(["locks"])
    @validate_querystring(LockQuery)
    @validate_request(RenewIn)
    @validate_response(LockGrant, 200)
    @errors(400, 404, 409, 413, 422, 503)
    async def renew_lock(query_args: LockQuery, data: RenewIn) -> LockGrant:
        """Extend the caller's live grant ``token`` to ``lease_ms`` from now (409 ``not_held``
        once the lease has ended: acquire again, for a new token)."""
        principal, network_id, _ = await network_of(query_args.network_id)
        granted = await service().renew(
            network_id, _holder(principal), data.name, token=data.token, lease_ms=data.lease_ms
        )
        return _grant(granted)

    @app.post("/api/v1/locks/release")
    @tag(["locks"])
    @validate_querystring(LockQuery)
    @validate_request(ReleaseIn)
    @no_content
    @errors(400, 404, 409, 413, 422, 503)
    async def release_lock(query_args: LockQuery, data: ReleaseIn) -> Response:
        """Release the caller's grant ``token``; the next waiter gets the lock."""
        principal, network_id, _ = await network_of(query_args.network_id)
        await service().release(network_id, _holder(principal), data.name, token=data.token)
        return Response(b"", status=204)

    @app.get("/api/v1/locks")
    @tag(["locks"])
    @validate_querystring(LockPageQuery)
    @validate_response(LockPage, 200)
    @errors(403, 404, 422, 503)
    async def list_locks(query_args: LockPageQuery) -> LockPage:
        """The network's locks with their holders, waiters and ages, by name (its owner
        only)."""
        _, network_id, role = await network_of(query_args.network_id)
        if role != "owner":
            raise Forbidden("only the network's owner sees its locks")
        after = _after(query_args.cursor)
        return _page(await service().view(network_id, after=after, limit=query_args.limit))

    @app.get("/api/admin/networks/<network_id>/locks")
    @tag(["admin"])
    @validate_querystring(AdminLockQuery)
    @validate_response(LockPage, 200)
    @errors(403, 404, 422, 503)
    async def admin_list_locks(network_id: str, query_args: AdminLockQuery) -> LockPage:
        """Any network's locks with their holders, waiters and ages, by name."""
        principal = guard.principal()
        await guard.domain().operators.get_network(principal.scope, network_id)
        after = _after(query_args.cursor)
        return _page(await service().view(network_id, after=after, limit=query_args.limit))
