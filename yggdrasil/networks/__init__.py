"""Networks and memberships: the tenant boundary.

Owns the ``networks`` and ``memberships`` tables. Other rooms check membership through
:func:`member_role` and :func:`require_member` inside their own units of work, or with the
:func:`is_member` condition inside their own statements.
"""

from ._networks import (
    Network,
    NetworkStore,
    insert_network,
    is_member,
    member_role,
    networks_of_user,
    remove_user_from_networks,
    require_member,
)

__all__ = [
    "Network",
    "NetworkStore",
    "insert_network",
    "is_member",
    "member_role",
    "networks_of_user",
    "remove_user_from_networks",
    "require_member",
]
