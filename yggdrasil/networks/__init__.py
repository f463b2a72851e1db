"""Networks and memberships: the tenant boundary.

Owns the ``networks`` and ``memberships`` tables. Other rooms check membership through
:func:`member_role` and :func:`require_member` inside their own units of work, or with the
:func:`is_member` condition inside their own statements.
"""

from ._networks import (
    Network,
    NetworkInfo,
    NetworkStore,
    all_networks,
    delete_network_row,
    insert_network,
    is_member,
    member_role,
    network_info,
    networks_of_user,
    remove_user_from_networks,
    require_member,
    set_network_name,
)

__all__ = [
    "Network",
    "NetworkInfo",
    "NetworkStore",
    "all_networks",
    "delete_network_row",
    "insert_network",
    "is_member",
    "member_role",
    "network_info",
    "networks_of_user",
    "remove_user_from_networks",
    "require_member",
    "set_network_name",
]
