"""Request and response bodies of the HTTP API (msgspec Structs; quart-schema validates them)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from yggdrasil import (
    Authorization,
    Device,
    EnrollmentKey,
    EnrollmentKeyInfo,
    Invalid,
    Network,
    NetworkInfo,
    NewDevice,
    Session,
    User,
    UserDetail,
)

DeviceId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
Email = Annotated[
    str, msgspec.Meta(max_length=254, pattern=r"^[^@\s]{1,64}@[^@\s]{1,253}\.[^@\s.]{1,63}$")
]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
OpaqueId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
WorldType = Literal["midgard", "asgard", "alfheim", "jotnar"]
JSON_FIELD_LIMIT = 16 * 1024


def _check_json_size(field: str, value: dict[str, Any] | None) -> None:
    if value is not None and len(msgspec.json.encode(value)) > JSON_FIELD_LIMIT:
        raise Invalid(f"{field} is limited to {JSON_FIELD_LIMIT} bytes of JSON")


class _In(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    pass


class DeviceIn(_In, frozen=True):
    device_id: DeviceId
    name: Name
    world_type: WorldType
    capabilities: dict[str, Any] = {}
    hardware_specs: dict[str, Any] = {}
    metadata: dict[str, Any] = {}

    def to_new(self) -> NewDevice:
        for field in ("capabilities", "hardware_specs", "metadata"):
            _check_json_size(field, getattr(self, field))
        return NewDevice(
            self.device_id,
            self.name,
            self.world_type,
            self.capabilities,
            self.hardware_specs,
            self.metadata,
        )


class DeviceUpdateIn(_In, frozen=True):
    name: Name | None = None
    world_type: WorldType | None = None
    capabilities: dict[str, Any] | None = None
    hardware_specs: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None

    def check(self) -> None:
        for field in ("capabilities", "hardware_specs", "metadata"):
            _check_json_size(field, getattr(self, field))


class RegisterIn(_In, frozen=True):
    email: Email
    display_name: Annotated[str, msgspec.Meta(max_length=100)] = ""


class LoginIn(_In, frozen=True):
    email: Email


class VerifyIn(_In, frozen=True):
    email: Email
    code: Annotated[str, msgspec.Meta(min_length=1, max_length=16)]
    device: DeviceIn | None = None
    """Sign in on this device: it joins ``network_id`` (or the home network) and gets its tokens."""
    network_id: OpaqueId | None = None


class RefreshIn(_In, frozen=True):
    refresh_token: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    device_id: DeviceId | None = None
    """Required for a device's refresh token: the device it was issued to."""
    network_id: OpaqueId | None = None


class EnrollIn(_In, frozen=True):
    key: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    device: DeviceIn


class OidcCallbackIn(_In, frozen=True):
    state: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    code: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
    device: DeviceIn | None = None
    network_id: OpaqueId | None = None


class AuthorizeQuery(_In, frozen=True):
    redirect_uri: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]


class ProfileIn(_In, frozen=True):
    display_name: Annotated[str, msgspec.Meta(max_length=100)] | None = None


class NetworkIn(_In, frozen=True):
    name: Name


class EnrollmentKeyIn(_In, frozen=True):
    ttl_s: Annotated[int, msgspec.Meta(ge=60)] = 24 * 3600


class DeviceQuery(_In, frozen=True):
    network_id: OpaqueId | None = None
    cursor: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=100)] = 50


class NetworkQuery(_In, frozen=True):
    network_id: OpaqueId | None = None


Cursor = Annotated[str, msgspec.Meta(max_length=256)]
PageLimit = Annotated[int, msgspec.Meta(ge=1, le=100)]


class PageQuery(_In, frozen=True):
    cursor: Cursor | None = None
    limit: PageLimit = 50


class UserQuery(_In, frozen=True):
    q: Annotated[str, msgspec.Meta(min_length=1, max_length=254)] | None = None
    """Part of an e-mail address (any case), or a whole user id."""
    email: Email | None = None
    """A whole e-mail address."""
    status: Literal["active", "suspended", "deleted"] | None = None
    """Only users of this status; by default every account not deleted."""
    cursor: Cursor | None = None
    limit: PageLimit = 50


class AdminDeviceQuery(_In, frozen=True):
    user_id: OpaqueId | None = None
    network_id: OpaqueId | None = None
    device_id: DeviceId | None = None
    cursor: Cursor | None = None
    limit: PageLimit = 50


class AdminNetworkQuery(_In, frozen=True):
    user_id: OpaqueId | None = None
    """Only the networks this user belongs to."""
    cursor: Cursor | None = None
    limit: PageLimit = 50


class AdminKeyQuery(_In, frozen=True):
    user_id: OpaqueId | None = None
    """Only the keys this user created."""
    network_id: OpaqueId | None = None
    usable: bool = False
    """Only the keys that can still be redeemed."""
    cursor: Cursor | None = None
    limit: PageLimit = 50


# ----------------------------------------------------------------------------- responses

# The domain's own structs are the API's bodies where they are the same thing.
UserOut = User
NetworkOut = Network
DeviceOut = Device
SessionOut = Session
EnrollmentKeyOut = EnrollmentKey
AuthorizationOut = Authorization
EnrollmentKeyInfoOut = EnrollmentKeyInfo
NetworkInfoOut = NetworkInfo
UserDetailOut = UserDetail


class Accepted(msgspec.Struct):
    status: str


class NetworkList(msgspec.Struct):
    items: list[NetworkOut]


class DevicePage(msgspec.Struct):
    items: list[DeviceOut]
    next_cursor: str | None


class DeviceList(msgspec.Struct):
    items: list[DeviceOut]


class UserPage(msgspec.Struct):
    items: list[UserOut]
    next_cursor: str | None


class NetworkInfoPage(msgspec.Struct):
    items: list[NetworkInfoOut]
    next_cursor: str | None


class EnrollmentKeyPage(msgspec.Struct):
    items: list[EnrollmentKeyInfoOut]
    next_cursor: str | None


class Export(msgspec.Struct):
    user: dict[str, Any]
    networks: list[dict[str, Any]]
    devices: list[dict[str, Any]]
    identities: list[dict[str, Any]]
    sessions: list[dict[str, Any]]
    enrollment_keys: list[dict[str, Any]]
    login_codes: list[dict[str, Any]]
    audit_log: list[dict[str, Any]]
    billing: dict[str, Any] = msgspec.field(default_factory=dict)
    """Balances, ledger entries, holds, payouts and their settings, KYC, spending limits."""
    marketplace: dict[str, Any] = msgspec.field(default_factory=dict)
    """Provider registrations, requests made and served, disputes on either side."""
    ddns: dict[str, Any] = msgspec.field(default_factory=dict)
    """The devices' DNS names and current public addresses."""


class IceServer(msgspec.Struct):
    urls: list[str]
    username: str | None = None
    credential: str | None = None


class IceServers(msgspec.Struct):
    """In the shape of WebRTC's ``RTCConfiguration.iceServers``."""

    ice_servers: list[IceServer]
    ttl_s: int


class WebRtcOffer(msgspec.Struct):
    """The SDP offer of a peer connection with one data channel labelled ``yggdrasil``."""

    type: Literal["offer"]
    sdp: Annotated[str, msgspec.Meta(min_length=1, max_length=32 * 1024)]


class WebRtcAnswer(msgspec.Struct):
    type: Literal["answer"]
    sdp: str


class Jwks(msgspec.Struct):
    keys: list[dict[str, Any]]


def convert(value: Any, model: type[Any]) -> Any:
    """A domain struct as the API's response struct of the same fields."""
    return msgspec.convert(msgspec.to_builtins(value), model)
