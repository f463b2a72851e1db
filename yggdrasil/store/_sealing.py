"""Moving a room's sealed columns to the current data key, and sealing what migration 0011
marked ``plain:``: one batch per transaction, each row with a compare-and-set, so that a
concurrent change of the row wins and the row is simply looked at again next time.

A room describes its personal columns with a :class:`SealedColumns`; it keeps its own SQL
otherwise, and runs :func:`reseal` as a unit of work (``db.write(lambda tx: reseal(...))``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .._crypto import PLAIN, SEALED, Vault
from ._db import Database, Row, Tx


@dataclass(frozen=True)
class SealedColumns:
    table: str
    key: tuple[str, ...]
    """The columns that name one row (the ``WHERE`` of its update)."""
    owner: str | tuple[str, ...]
    """The column whose value binds a ciphertext to its row: ``place`` is
    ``table.column/<owner>``; several columns bind it to all of them (``<a>/<b>``)."""
    columns: tuple[str, ...]
    indexes: dict[str, tuple[str, str]] = field(default_factory=dict)
    """``column -> (index column, kind)``: the blind index a ``plain:`` value also gets."""

    def place(self, column: str, owner: object) -> str:
        return f"{self.table}.{column}/{owner}"

    @property
    def owners(self) -> tuple[str, ...]:
        return (self.owner,) if isinstance(self.owner, str) else self.owner

    def owner_of(self, row: Row) -> str:
        """The ``owner`` of ``row`` as :meth:`place` takes it."""
        return "/".join(str(row[column]) for column in self.owners)


async def reseal(tx: Tx, vault: Vault, spec: SealedColumns, limit: int) -> int:
    """Seal up to ``limit`` rows of ``spec.table`` whose personal columns are ``plain:`` or
    under an older key with the current key; how many rows changed."""
    current = f"{SEALED}{vault.current}:%"
    stale = " OR ".join(
        f"{c} LIKE '{PLAIN}%' OR ({c} LIKE '{SEALED}%' AND {c} NOT LIKE $1)" for c in spec.columns
    )
    names = ", ".join(dict.fromkeys((*spec.key, *spec.owners, *spec.columns)))
    rows = await tx.fetch(
        f"SELECT {names} FROM {spec.table} WHERE {stale} LIMIT $2", current, limit
    )
    changed = 0
    for row in rows:
        sets: list[str] = []
        args: list[object] = []
        for column in spec.columns:
            value = row[column]
            if not vault.needs_sealing(value):
                continue
            place = spec.place(column, spec.owner_of(row))
            text = vault.open(value, place)
            args.append(vault.seal(text, place))
            sets.append(f"{column} = ${len(args)}")
            if column in spec.indexes and value.startswith(PLAIN):
                index_column, kind = spec.indexes[column]
                args.append(vault.index(kind, text))
                sets.append(f"{index_column} = ${len(args)}")
        where: list[str] = []
        for column in dict.fromkeys((*spec.key, *spec.columns)):
            if row[column] is None:
                where.append(f"{column} IS NULL")
            else:
                args.append(row[column])
                where.append(f"{column} = ${len(args)}")
        changed += await tx.execute(
            f"UPDATE {spec.table} SET {', '.join(sets)} WHERE {' AND '.join(where)}", *args
        )
    return changed


async def reseal_all(db: Database, specs: Sequence[SealedColumns], batch: int) -> int:
    """:func:`reseal` every table of ``specs`` until nothing is left, a batch per transaction;
    how many rows changed. Safe to run on any instance, any time, several at once."""
    total = 0
    for spec in specs:

        async def work(tx: Tx, spec: SealedColumns = spec) -> int:
            return await reseal(tx, db.vault, spec, batch)

        while True:
            changed = await db.write(work)
            total += changed
            if changed < batch:
                break
    return total


async def key_usage(
    db: Database, specs: Sequence[SealedColumns], *, audit: bool = True
) -> dict[str, int]:
    """How many stored values each data key sealed (``plain`` for those not sealed yet): in
    the columns of ``specs`` and in the audit log's details, which never change and so keep
    their keys until retention removes them. A key with no values may be retired."""

    async def work(tx: Tx) -> dict[str, int]:
        usage: dict[str, int] = {}
        for spec in specs:
            for kid, count in (await count_by_key(tx, spec)).items():
                usage[kid] = usage.get(kid, 0) + count
        for table in ("audit_log", "audit_pending") if audit else ():
            rows = await tx.fetch(f"SELECT detail FROM {table} WHERE detail LIKE '%\"{SEALED}%'")
            for row in rows:
                for part in str(row["detail"]).split(f'"{SEALED}')[1:]:
                    kid = part.partition(":")[0]
                    usage[kid] = usage.get(kid, 0) + 1
        return usage

    return await db.read(work)


async def count_by_key(tx: Tx, spec: SealedColumns) -> dict[str, int]:
    """How many values of ``spec``'s columns each data key sealed (``plain`` for those not
    sealed yet)."""
    counts: dict[str, int] = {}
    for column in spec.columns:
        rows = await tx.fetch(
            f"SELECT {column} AS v FROM {spec.table}"
            f" WHERE {column} LIKE '{SEALED}%' OR {column} LIKE '{PLAIN}%'"
        )
        for row in rows:
            value: str = row["v"]
            kid = "plain" if value.startswith(PLAIN) else value[len(SEALED) :].partition(":")[0]
            counts[kid] = counts.get(kid, 0) + 1
    return counts
