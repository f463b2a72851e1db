"""Networks and devices: always within the caller's own networks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from quart import Quart, Response
from quart_schema import tag, validate_querystring, validate_request, validate_response

from yggdrasil import DeviceUpdate, Domain, NotFound, Principal

from ._auth import Guard, errors
from ._models import (
    DeviceIn,
    DeviceOut,
    DevicePage,
    DeviceQuery,
    DeviceUpdateIn,
    EnrollmentKeyIn,
    EnrollmentKeyOut,
    EnrollmentKeyPage,
    IceServers,
    NetworkIn,
    NetworkList,
    NetworkOut,
    NetworkQuery,
    PageQuery,
    WebRtcAnswer,
    WebRtcOffer,
    convert,
)
from ._openapi import no_content


async def _device_scope(guard: Guard, requested: str | None) -> tuple[Principal, Domain, str]:
    """The caller, the domain, and the network a device request is about: the one asked for
    (checked by the store against the caller's memberships), else the device token's own network,
    else the home network its user's token names (a token from before tokens named it: looked
    up)."""
    principal = guard.principal()
    domain = guard.domain()
    for chosen in (requested, principal.network_id, principal.home_network_id):
        if chosen is not None:
            return principal, domain, chosen
    user = await domain.store.get_me(principal.scope)
    if user.home_network_id is None:
        raise NotFound()
    return principal, domain, user.home_network_id


def install(
    app: Quart,
    guard: Guard,
    ice: Callable[[str, str, str], dict[str, Any]] | None = None,
    webrtc: Callable[[Principal, str], Awaitable[str]] | None = None,
) -> None:
    # ------------------------------------------------------------------- networks

    @app.get("/api/v1/networks")
    @tag(["networks"])
    @validate_response(NetworkList, 200)
    @errors(503)
    async def list_networks() -> NetworkList:
        """The caller's networks (a device's token sees only its own)."""
        principal = guard.principal()
        networks = await guard.domain().store.list_networks(principal.scope)
        return NetworkList([convert(n, NetworkOut) for n in networks])

    @app.post("/api/v1/networks")
    @tag(["networks"])
    @validate_request(NetworkIn)
    @validate_response(NetworkOut, 201)
    @errors(400, 403, 413, 422, 503)
    async def create_network(data: NetworkIn) -> tuple[NetworkOut, int]:
        principal = guard.principal()
        network = await guard.domain().store.create_network(principal.scope, data.name)
        return convert(network, NetworkOut), 201

    @app.get("/api/v1/networks/<network_id>")
    @tag(["networks"])
    @validate_response(NetworkOut, 200)
    @errors(404, 503)
    async def get_network(network_id: str) -> NetworkOut:
        principal = guard.principal()
        network = await guard.domain().store.get_network(principal.scope, network_id)
        return convert(network, NetworkOut)  # type: ignore[no-any-return]

    @app.put("/api/v1/networks/<network_id>")
    @tag(["networks"])
    @validate_request(NetworkIn)
    @validate_response(NetworkOut, 200)
    @errors(400, 403, 404, 413, 422, 503)
    async def rename_network(network_id: str, data: NetworkIn) -> NetworkOut:
        """Rename a network (its owner only)."""
        principal = guard.principal()
        network = await guard.domain().store.networks.rename_network(
            principal.scope, network_id, data.name
        )
        return convert(network, NetworkOut)  # type: ignore[no-any-return]

    @app.delete("/api/v1/networks/<network_id>")
    @tag(["networks"])
    @no_content
    @errors(403, 404, 409, 503)
    async def delete_network(network_id: str) -> Response:
        """Delete a network (its owner only) with its devices and enrolment keys; the devices'
        tokens stop working and their sessions end at once. The home network goes only with the
        account (409 ``home_network``)."""
        principal = guard.principal()
        at, revoked = await guard.domain().account_data.delete_network(principal.scope, network_id)
        for subject in revoked:
            guard.revoke(subject, at)
        return Response(b"", status=204)

    @app.get("/api/v1/networks/<network_id>/enrollment-keys")
    @tag(["networks"])
    @validate_querystring(PageQuery)
    @validate_response(EnrollmentKeyPage, 200)
    @errors(404, 422, 503)
    async def list_enrollment_keys(network_id: str, query_args: PageQuery) -> EnrollmentKeyPage:
        """The enrolment keys the caller created for this network (never their secrets), with
        their ``status``: ``usable``, ``used`` or ``expired`` (revoked keys are expired)."""
        principal = guard.principal()
        page = await guard.domain().account_data.enrollment_keys(
            principal.scope, network_id, cursor=query_args.cursor, limit=query_args.limit
        )
        return convert(page, EnrollmentKeyPage)  # type: ignore[no-any-return]

    @app.delete("/api/v1/networks/<network_id>/enrollment-keys/<key_id>")
    @tag(["networks"])
    @no_content
    @errors(404, 409, 503)
    async def revoke_enrollment_key(network_id: str, key_id: str) -> Response:
        """Revoke one of the caller's enrolment keys: it can no longer be redeemed (409
        ``key_used`` if it already was; revoking an expired key changes nothing)."""
        principal = guard.principal()
        await guard.domain().account_data.revoke_enrollment_key(principal.scope, network_id, key_id)
        return Response(b"", status=204)

    @app.post("/api/v1/networks/<network_id>/enrollment-keys")
    @tag(["networks"])
    @validate_request(EnrollmentKeyIn)
    @validate_response(EnrollmentKeyOut, 201)
    @errors(400, 403, 404, 413, 422, 503)
    async def create_enrollment_key(
        network_id: str, data: EnrollmentKeyIn
    ) -> tuple[EnrollmentKeyOut, int]:
        """A single-use key for a headless device to join this network; shown only now."""
        principal = guard.principal()
        key = await guard.domain().accounts.create_enrollment_key(
            principal.scope, network_id, ttl_s=data.ttl_s
        )
        return convert(key, EnrollmentKeyOut), 201

    # ------------------------------------------------------------------- devices

    @app.get("/api/v1/devices")
    @tag(["devices"])
    @validate_querystring(DeviceQuery)
    @validate_response(DevicePage, 200)
    @errors(404, 422, 503)
    async def list_devices(query_args: DeviceQuery) -> DevicePage:
        """Discovery: the devices of one of the caller's networks, with their status."""
        principal, domain, network_id = await _device_scope(guard, query_args.network_id)
        page = await domain.store.list_devices(
            principal.scope, network_id, cursor=query_args.cursor, limit=query_args.limit
        )
        return convert(page, DevicePage)  # type: ignore[no-any-return]

    @app.post("/api/v1/devices")
    @tag(["devices"])
    @validate_querystring(NetworkQuery)
    @validate_request(DeviceIn)
    @validate_response(DeviceOut, 201)
    @errors(400, 404, 409, 413, 422, 503)
    async def register_device(query_args: NetworkQuery, data: DeviceIn) -> tuple[DeviceOut, int]:
        principal, domain, network_id = await _device_scope(guard, query_args.network_id)
        device = await domain.store.register_device(principal.scope, network_id, data.to_new())
        return convert(device, DeviceOut), 201

    @app.get("/api/v1/devices/<device_id>")
    @tag(["devices"])
    @validate_querystring(NetworkQuery)
    @validate_response(DeviceOut, 200)
    @errors(404, 422, 503)
    async def get_device(device_id: str, query_args: NetworkQuery) -> DeviceOut:
        principal, domain, network_id = await _device_scope(guard, query_args.network_id)
        device = await domain.store.get_device(principal.scope, network_id, device_id)
        return convert(device, DeviceOut)  # type: ignore[no-any-return]

    @app.put("/api/v1/devices/<device_id>")
    @tag(["devices"])
    @validate_querystring(NetworkQuery)
    @validate_request(DeviceUpdateIn)
    @validate_response(DeviceOut, 200)
    @errors(400, 404, 413, 422, 503)
    async def update_device(
        device_id: str, query_args: NetworkQuery, data: DeviceUpdateIn
    ) -> DeviceOut:
        principal, domain, network_id = await _device_scope(guard, query_args.network_id)
        data.check()
        update = DeviceUpdate(
            name=data.name,
            world_type=data.world_type,
            capabilities=data.capabilities,
            hardware_specs=data.hardware_specs,
            metadata=data.metadata,
        )
        device = await domain.store.update_device(principal.scope, network_id, device_id, update)
        return convert(device, DeviceOut)  # type: ignore[no-any-return]

    @app.delete("/api/v1/devices/<device_id>")
    @tag(["devices"])
    @validate_querystring(NetworkQuery)
    @no_content
    @errors(404, 422, 503)
    async def delete_device(device_id: str, query_args: NetworkQuery) -> Response:
        """Unregister a device; its tokens stop working at once."""
        principal, domain, network_id = await _device_scope(guard, query_args.network_id)
        at = await domain.store.delete_device(principal.scope, network_id, device_id)
        guard.revoke(f"device:{network_id}/{device_id}", at)
        return Response(b"", status=204)

    @app.get("/api/v1/devices/<device_id>/ice-servers")
    @tag(["devices"])
    @validate_querystring(NetworkQuery)
    @validate_response(IceServers, 200)
    @errors(404, 422, 503)
    async def ice_servers(device_id: str, query_args: NetworkQuery) -> IceServers:
        """STUN and TURN URLs with fresh, expiring credentials for one of the caller's devices."""
        principal, domain, network_id = await _device_scope(guard, query_args.network_id)
        await domain.store.get_device(principal.scope, network_id, device_id)
        if ice is None:
            raise NotFound()
        return convert(ice(principal.user_id, network_id, device_id), IceServers)  # type: ignore[no-any-return]

    @app.post("/api/v1/devices/<device_id>/webrtc")
    @tag(["devices"])
    @validate_querystring(NetworkQuery)
    @validate_request(WebRtcOffer)
    @validate_response(WebRtcAnswer, 200)
    @errors(400, 403, 404, 413, 422, 503)
    async def webrtc_session(
        device_id: str, query_args: NetworkQuery, data: WebRtcOffer
    ) -> WebRtcAnswer:
        """Open the calling device's session over a WebRTC data channel.

        Post the SDP offer of a peer connection that has one data channel labelled
        ``yggdrasil`` (ICE candidates gathered, no trickle); apply the answer. Once the channel
        opens, it carries the device protocol exactly as the websocket gateway does. Only the
        device's own token opens its session.
        """
        principal, domain, network_id = await _device_scope(guard, query_args.network_id)
        await domain.store.get_device(principal.scope, network_id, device_id)
        if webrtc is None:
            raise NotFound()
        return WebRtcAnswer(type="answer", sdp=await webrtc(principal, data.sdp))
