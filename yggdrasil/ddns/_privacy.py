"""The ddns room's part of a user's data export and account deletion (the accounts room's
``RoomData``, handed over by the composition)."""

from __future__ import annotations

from typing import Any

from ..devices import devices_of_user
from ..store import Database, Tx
from ._names import open_addresses


class DdnsData:
    def __init__(self, db: Database) -> None:
        self.db = db
        """Its ``vault`` opens the sealed addresses for their owner's export."""

    async def export(self, tx: Tx, user_id: str) -> dict[str, Any]:
        """The user's devices' DNS names and current addresses."""
        names = await tx.fetch(
            "SELECT label, network_id, device_id, created_at FROM ddns_names WHERE user_id = $1"
            " ORDER BY label",
            user_id,
        )
        addresses = []
        for device in await devices_of_user(tx, user_id):
            row = await tx.fetchrow(
                "SELECT network_id, device_id, seen, reported, updated_at FROM device_addresses"
                " WHERE network_id = $1 AND device_id = $2",
                device.network_id,
                device.device_id,
            )
            if row is not None:
                seen, reported = open_addresses(row, self.db.vault)
                addresses.append(
                    {
                        "network_id": device.network_id,
                        "device_id": device.device_id,
                        "seen": seen,
                        "reported": reported,
                        "updated_at": row["updated_at"],
                    }
                )
        return {"names": [dict(row) for row in names], "addresses": addresses}

    async def forget(self, tx: Tx, user_id: str) -> None:
        """Nothing here: the account's devices are deleted in the same unit, their addresses
        with them (foreign key), and the ddns service's next sweep takes their names out of
        the zone and the table (deleting the rows now would leave the records in the zone)."""
