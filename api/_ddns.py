"""DDNS for devices: a user names one of their own devices under the operator's zone, and the
name follows the device's public address (see ``docs/ddns.md``).

The device is one of the caller's networks' (``network_id``, else the device token's own, else
the user's home network): another network's device answers 404 exactly like a missing one
(looked up before anything else, even without a zone). A
label another device holds answers 409 ``name_taken``, whoever holds it. Without a ``[ddns]``
zone the routes answer 404 (like the ICE route without TURN).
"""

from __future__ import annotations

from quart import Quart, Response
from quart_schema import tag, validate_querystring, validate_request, validate_response

from yggdrasil import NotFound
from yggdrasil.ddns import Ddns, DdnsName

from ._auth import Guard, errors
from ._ddns_models import DdnsIn, DdnsOut
from ._models import NetworkQuery
from ._openapi import no_content
from ._resources import _device_scope


def install(app: Quart, guard: Guard, ddns: Ddns | None) -> None:
    def service() -> Ddns:
        if ddns is None:
            raise NotFound("this server offers no DDNS (no [ddns] zone is configured)")
        return ddns

    def out(name: DdnsName) -> DdnsOut:
        return DdnsOut(
            name=service().full_name(name.label),
            label=name.label,
            device_id=name.device_id,
            network_id=name.network_id,
            created_at=name.created_at,
            addresses=name.addresses,
        )

    @app.put("/api/v1/devices/<device_id>/ddns")
    @tag(["devices"])
    @validate_querystring(NetworkQuery)
    @validate_request(DdnsIn)
    @validate_response(DdnsOut, 200)
    @errors(400, 403, 404, 409, 413, 422, 503)
    async def set_ddns(device_id: str, query_args: NetworkQuery, data: DdnsIn) -> DdnsOut:
        """Give one of the caller's own devices the name ``<label>.<zone>``, replacing the name
        it had: its A/AAAA records follow the device's public address from now on (the update
        is sent at once, in the background). 409 ``name_taken`` if another device has it."""
        principal, domain, network_id = await _device_scope(guard, query_args.network_id)
        await domain.store.get_device(principal.scope, network_id, device_id)
        name = await service().set_name(principal.scope, network_id, device_id, data.label)
        return out(name)

    @app.get("/api/v1/devices/<device_id>/ddns")
    @tag(["devices"])
    @validate_querystring(NetworkQuery)
    @validate_response(DdnsOut, 200)
    @errors(404, 422, 503)
    async def get_ddns(device_id: str, query_args: NetworkQuery) -> DdnsOut:
        """The device's DNS name and current addresses; 404 if it has none."""
        principal, domain, network_id = await _device_scope(guard, query_args.network_id)
        await domain.store.get_device(principal.scope, network_id, device_id)
        return out(await service().get_name(principal.scope, network_id, device_id))

    @app.delete("/api/v1/devices/<device_id>/ddns")
    @tag(["devices"])
    @validate_querystring(NetworkQuery)
    @no_content
    @errors(403, 404, 422, 503)
    async def delete_ddns(device_id: str, query_args: NetworkQuery) -> Response:
        """Take the device's name away: its records leave the zone (in the background)."""
        principal, domain, network_id = await _device_scope(guard, query_args.network_id)
        await domain.store.get_device(principal.scope, network_id, device_id)
        await service().remove_name(principal.scope, network_id, device_id)
        return Response(b"", status=204)
