"""Dynamic IPs and DDNS: each device's current public address, and DNS names for devices.

Owns the ``device_addresses`` and ``ddns_names`` tables. The relay's network actors report
address changes (:meth:`Ddns.address_changed`); users give their own devices a name
``<label>.<zone>`` under the operator's zone (``[ddns]``), which :class:`Ddns` keeps pointed at the
device's current address with RFC 2136 dynamic updates signed with TSIG. See ``docs/ddns.md``.
"""

from ._dns import UpdateFailed, Updater
from ._names import (
    ADDRESSES_SEALED,
    MAX_ADDRESSES,
    DdnsName,
    InvalidAddress,
    NameTaken,
    check_addresses,
    check_label,
    current_addresses,
    open_addresses,
    publishable,
)
from ._privacy import DdnsData
from ._service import Ddns, DdnsCollector, DdnsStats

__all__ = [
    "ADDRESSES_SEALED",
    "MAX_ADDRESSES",
    "Ddns",
    "DdnsCollector",
    "DdnsData",
    "DdnsName",
    "DdnsStats",
    "InvalidAddress",
    "NameTaken",
    "UpdateFailed",
    "Updater",
    "check_addresses",
    "check_label",
    "current_addresses",
    "open_addresses",
    "publishable",
]
