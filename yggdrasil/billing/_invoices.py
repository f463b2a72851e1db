"""Invoices: issued with the payment they document, numbered per year, immutable, as JSON and as
a printable HTML page.

An invoice is issued inside the transaction that records what was paid (a subscription's
period, a plan change), by :func:`issue_invoice`; nothing changes it afterwards (the database
refuses updates and deletions). A line has a ``kind``: the subscriptions write
``subscription``, ``proration_credit``, ``proration_charge`` and ``usage``; another part of the
billing room (the marketplace's settlements, say) issues invoices with lines of its own kind,
e.g. ``marketplace``, through the same function. A credit is a line with a negative amount.

Numbers are ``YGG-<year>-<n>``: ``n`` counts from 1 in each calendar year (UTC) of issue, without
gaps between committed invoices (the counter is taken in the issuing transaction).
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from typing import Annotated

import msgspec

from .._errors import Invalid, NotFound
from .._ids import new_id
from ..store import MAX_PAGE, Database, Page, Row, Tx, decode_cursor, encode_cursor

LineKind = Annotated[str, msgspec.Meta(pattern="^[a-z][a-z_]{0,31}$")]
SUBSCRIPTION_LINE_KINDS = ("subscription", "proration_credit", "proration_charge", "usage")


class InvoiceLine(msgspec.Struct, frozen=True):
    kind: LineKind
    description: str
    amount_cents: int
    """Negative for a credit."""
    quantity: int = 1
    """Tokens for a ``usage`` line, otherwise 1."""


class Invoice(msgspec.Struct, frozen=True):
    invoice_id: str
    number: str
    user_id: str
    subscription_id: str | None
    currency: str
    total_cents: int
    lines: list[InvoiceLine]
    period_start: int | None
    period_end: int | None
    payment_provider: str
    payment_reference: str
    test_mode: bool
    issued_at: int


_lines = msgspec.json.Decoder(list[InvoiceLine])


def _invoice(row: Row) -> Invoice:
    return Invoice(
        invoice_id=row["invoice_id"],
        number=row["number"],
        user_id=row["user_id"],
        subscription_id=row["subscription_id"],
        currency=row["currency"],
        total_cents=row["total_cents"],
        lines=_lines.decode(row["lines"]),
        period_start=row["period_start"],
        period_end=row["period_end"],
        payment_provider=row["payment_provider"],
        payment_reference=row["payment_reference"],
        test_mode=bool(row["test_mode"]),
        issued_at=row["issued_at"],
    )


def encode_lines(lines: list[InvoiceLine]) -> str:
    return msgspec.json.encode(lines).decode()


def decode_lines(text: str) -> list[InvoiceLine]:
    return _lines.decode(text)


async def issue_invoice(
    tx: Tx,
    *,
    user_id: str,
    currency: str,
    lines: list[InvoiceLine],
    at: int,
    payment_provider: str,
    payment_reference: str,
    test_mode: bool,
    subscription_id: str | None = None,
    period: tuple[int, int] | None = None,
) -> Invoice:
    """Issue an invoice inside ``tx`` (the transaction that records the payment): numbered,
    stored for good, returned. ``lines`` may not be empty; the total is their sum."""
    if not lines:
        raise Invalid("an invoice needs at least one line")
    for line in lines:
        msgspec.convert(msgspec.to_builtins(line), InvoiceLine)  # kinds are checked
    year = datetime.fromtimestamp(at / 1000, UTC).year
    number = await tx.fetchval(
        "INSERT INTO invoice_numbers (year, last_number) VALUES ($1, 1)"
        " ON CONFLICT (year) DO UPDATE SET last_number = invoice_numbers.last_number + 1"
        " RETURNING last_number",
        year,
    )
    invoice = Invoice(
        invoice_id=new_id("inv"),
        number=f"YGG-{year}-{number:06d}",
        user_id=user_id,
        subscription_id=subscription_id,
        currency=currency,
        total_cents=sum(line.amount_cents for line in lines),
        lines=list(lines),
        period_start=None if period is None else period[0],
        period_end=None if period is None else period[1],
        payment_provider=payment_provider,
        payment_reference=payment_reference,
        test_mode=test_mode,
        issued_at=at,
    )
    await tx.execute(
        "INSERT INTO invoices (invoice_id, number, user_id, subscription_id, currency,"
        " total_cents, lines, period_start, period_end, payment_provider, payment_reference,"
        " test_mode, issued_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        invoice.invoice_id,
        invoice.number,
        user_id,
        subscription_id,
        currency,
        invoice.total_cents,
        encode_lines(invoice.lines),
        invoice.period_start,
        invoice.period_end,
        payment_provider,
        payment_reference,
        int(test_mode),
        at,
    )
    return invoice


class Invoices:
    """A user's own invoices: another user's id is :class:`NotFound`, like a missing one."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def list(
        self, user_id: str, *, cursor: str | None = None, limit: int = 50
    ) -> Page[Invoice]:
        """Newest first, ``limit`` (at most 100) per page."""
        limit = max(1, min(limit, MAX_PAGE))
        after = None if cursor is None else decode_cursor(cursor)
        if cursor is not None and after is None:
            raise Invalid("cursor is not one of ours")
        position: list[object] = []
        if after is not None:
            issued, _, invoice_id = after.partition("/")
            if not issued.isdigit() or not invoice_id:
                raise Invalid("cursor is not one of ours")
            position = [int(issued), invoice_id]

        async def read(tx: Tx) -> list[Row]:
            if position:
                return await tx.fetch(
                    "SELECT * FROM invoices WHERE user_id = $1 AND (issued_at < $2 OR"
                    " (issued_at = $2 AND invoice_id < $3))"
                    " ORDER BY issued_at DESC, invoice_id DESC LIMIT $4",
                    user_id,
                    *position,
                    limit + 1,
                )
            return await tx.fetch(
                "SELECT * FROM invoices WHERE user_id = $1"
                " ORDER BY issued_at DESC, invoice_id DESC LIMIT $2",
                user_id,
                limit + 1,
            )

        rows = await self._db.read(read)
        items = [_invoice(row) for row in rows[:limit]]
        following = None
        if len(rows) > limit:
            last = items[-1]
            following = encode_cursor(f"{last.issued_at}/{last.invoice_id}")
        return Page(items, following)

    async def get(self, user_id: str, invoice_id: str) -> Invoice:
        async def read(tx: Tx) -> Row | None:
            return await tx.fetchrow(
                "SELECT * FROM invoices WHERE invoice_id = $1 AND user_id = $2",
                invoice_id,
                user_id,
            )

        row = await self._db.read(read)
        if row is None:
            raise NotFound()
        return _invoice(row)


# --------------------------------------------------------------------- the printable page


def format_cents(cents: int, currency: str) -> str:
    """``-12.34 EUR``: integer arithmetic only."""
    sign = "-" if cents < 0 else ""
    whole, part = divmod(abs(cents), 100)
    return f"{sign}{whole:,}.{part:02d} {currency}"


def _date(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d")


_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 48em; color: #111; }
table { border-collapse: collapse; width: 100%; margin-top: 1.5em; }
th, td { border-bottom: 1px solid #ccc; padding: .4em; text-align: left; }
td.amount, th.amount { text-align: right; white-space: nowrap; }
tfoot td { font-weight: bold; border-bottom: none; }
.test { border: 2px solid #b00; color: #b00; padding: .5em; font-weight: bold; }
@media print { body { margin: 0; } }
"""


def render_html(invoice: Invoice) -> str:
    """The invoice as one self-contained HTML page: no script, no external resource, every
    value escaped."""
    e = html.escape
    rows = "\n".join(
        "<tr><td>{}</td><td>{}</td><td class=amount>{}</td><td class=amount>{}</td></tr>".format(
            e(line.description),
            e(line.kind.replace("_", " ")),
            e(f"{line.quantity:,}"),
            e(format_cents(line.amount_cents, invoice.currency)),
        )
        for line in invoice.lines
    )
    period = ""
    if invoice.period_start is not None and invoice.period_end is not None:
        period = (
            f"<p>Period: {e(_date(invoice.period_start))} to {e(_date(invoice.period_end))}</p>"
        )
    test = (
        "<p class=test>TEST MODE: no money was moved (sandbox payment provider).</p>"
        if invoice.test_mode
        else ""
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>Invoice {e(invoice.number)}</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>Invoice {e(invoice.number)}</h1>
{test}
<p>Issued: {e(_date(invoice.issued_at))}<br>
Customer: {e(invoice.user_id)}<br>
Paid through: {e(invoice.payment_provider)} ({e(invoice.payment_reference or "no charge")})</p>
{period}
<table>
<thead><tr><th>Item</th><th>Kind</th><th class=amount>Quantity</th>
<th class=amount>Amount</th></tr></thead>
<tbody>
{rows}
</tbody>
<tfoot><tr><td colspan=3>Total</td>
<td class=amount>{e(format_cents(invoice.total_cents, invoice.currency))}</td></tr></tfoot>
</table>
</body>
</html>
"""
