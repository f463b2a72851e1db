"""The device registry: registration, listing, update, deletion and presence of devices.

Owns the ``devices`` table. Tenant scoping goes through the networks room's membership check;
other rooms register a device only through :func:`insert_device` / :func:`claim_device`.
"""

from ._devices import (
    DEVICES_SEALED,
    Device,
    DeviceStore,
    DeviceUpdate,
    NewDevice,
    RevokeDevice,
    WorldType,
    claim_device,
    delete_devices_of_user,
    device_ids_of_network,
    devices_of_user,
    find_devices,
    insert_device,
    remove_device,
    scoped_device,
)

__all__ = [
    "DEVICES_SEALED",
    "Device",
    "DeviceStore",
    "DeviceUpdate",
    "NewDevice",
    "RevokeDevice",
    "WorldType",
    "claim_device",
    "delete_devices_of_user",
    "device_ids_of_network",
    "devices_of_user",
    "find_devices",
    "insert_device",
    "remove_device",
    "scoped_device",
]
