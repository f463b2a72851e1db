"""Operator routes under ``/api/admin``: user tokens are refused, every action is audited."""

from __future__ import annotations

from quart import Quart
from quart_schema import tag, validate_querystring, validate_response

from ._auth import Guard, errors
from ._models import DeviceList, DeviceOut, UserList, UserOut, UserQuery, convert


def install(app: Quart, guard: Guard) -> None:
    @app.get("/api/admin/users")
    @tag(["admin"])
    @validate_querystring(UserQuery)
    @validate_response(UserList, 200)
    @errors(403, 422, 503)
    async def find_users(query_args: UserQuery) -> UserList:
        """Find a user by e-mail address (support)."""
        principal = guard.principal()
        users = await guard.domain().operators.find_users(principal.scope, email=query_args.email)
        return UserList([convert(u, UserOut) for u in users])

    @app.post("/api/admin/users/<user_id>/suspend")
    @tag(["admin"])
    @validate_response(UserOut, 200)
    @errors(403, 404, 503)
    async def suspend(user_id: str) -> UserOut:
        """Suspend a user: every token of theirs stops working at once."""
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
