"""The device's side of a WebRTC session: a data channel to Yggdrasil, negotiated over the
HTTP API (see :class:`relay.protocol.DataChannelTransport` for what travels on it).

Requires a running trio-asyncio loop (``trio_asyncio.open_loop()``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import trio
import trio_asyncio
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.rtcconfiguration import RTCIceTransportPolicy

from ..protocol import CHANNEL_LABEL, DataChannelTransport, max_message_bytes
from ._client import SessionRefused


def ice_server_list(body: dict[str, Any]) -> list[RTCIceServer]:
    """``GET /api/v1/devices/{id}/ice-servers``'s answer as aiortc's configuration."""
    return [
        RTCIceServer(
            urls=server["urls"],
            username=server.get("username"),
            credential=server.get("credential"),
        )
        for server in body["ice_servers"]
    ]


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except Exception:
        return response.reason_phrase


@contextlib.asynccontextmanager
async def open_webrtc(
    api_url: str,
    device_id: str,
    access_token: str,
    *,
    relay_only: bool = False,
    connect_timeout_s: float = 15.0,
) -> AsyncIterator[DataChannelTransport]:
    """The device's side: a data channel to Yggdrasil, negotiated over the HTTP API.

    ``relay_only`` uses only TURN relay candidates (Yggdrasil's own TURN server).
    Raises :class:`SessionRefused` if the API refuses, ``trio.TooSlowError`` if the channel does
    not open within ``connect_timeout_s``.
    """
    headers = {"authorization": f"Bearer {access_token}"}
    aio = trio_asyncio.aio_as_trio
    async with httpx.AsyncClient(base_url=api_url, timeout=connect_timeout_s) as http:
        response = await http.get(f"/api/v1/devices/{device_id}/ice-servers", headers=headers)
        if response.status_code != 200:
            raise SessionRefused(response.status_code, _message(response))
        policy = RTCIceTransportPolicy.RELAY if relay_only else RTCIceTransportPolicy.ALL
        pc = RTCPeerConnection(
            RTCConfiguration(iceServers=ice_server_list(response.json()), iceTransportPolicy=policy)
        )
        transport = DataChannelTransport(pc, pc.createDataChannel(CHANNEL_LABEL), server=False)
        try:
            await aio(pc.setLocalDescription)(await aio(pc.createOffer)())
            response = await http.post(
                f"/api/v1/devices/{device_id}/webrtc",
                json={"type": "offer", "sdp": pc.localDescription.sdp},
                headers=headers,
            )
            if response.status_code != 200:
                raise SessionRefused(response.status_code, _message(response))
            answer = response.json()["sdp"]
            transport.max_message_bytes = max_message_bytes(answer)
            await aio(pc.setRemoteDescription)(RTCSessionDescription(sdp=answer, type="answer"))
            with trio.fail_after(connect_timeout_s):
                await transport.opened.wait()
            yield transport
        finally:
            with trio.CancelScope(shield=True):
                await transport.aclose()
