"""Invoices on both backends: numbered per year, immutable, the owner's only, paginated, and a
printable page that is self-contained and escapes what it shows."""

from __future__ import annotations

from datetime import UTC, datetime
from html.parser import HTMLParser

import pytest

from yggdrasil import Invalid, NotFound, Store
from yggdrasil.billing import Invoice, InvoiceLine, Invoices, issue_invoice, render_html
from yggdrasil.store import Tx


class Tags(HTMLParser):
    """Every element and attribute name of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()
        self.attributes: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.names.add(tag)
        self.attributes |= {name for name, _ in attrs}


def ms(year: int, month: int, day: int) -> int:
    return int(datetime(year, month, day, tzinfo=UTC).timestamp() * 1000)


async def user(store: Store, name: str) -> str:
    created, _ = await store.create_user(f"{name}@example.org")
    return created.user_id


async def issue(store: Store, user_id: str, at: int, lines: list[InvoiceLine]) -> Invoice:
    async def work(tx: Tx) -> Invoice:
        return await issue_invoice(
            tx,
            user_id=user_id,
            currency="EUR",
            lines=lines,
            at=at,
            payment_provider="sandbox",
            payment_reference="sbx_1",
            test_mode=True,
        )

    return await store.db.write(work)


FEE = [InvoiceLine("subscription", "Premium", 3000)]


async def test_numbers_count_per_year_and_totals_add_up(store: Store) -> None:
    ada, bob = await user(store, "ada"), await user(store, "bob")
    first = await issue(store, ada, ms(2025, 3, 1), FEE)
    second = await issue(store, bob, ms(2025, 12, 31), FEE)
    next_year = await issue(store, ada, ms(2026, 1, 1), FEE)
    mixed = await issue(
        store,
        ada,
        ms(2026, 2, 1),
        [
            InvoiceLine("proration_credit", "unused Premium", -1500),
            InvoiceLine("proration_charge", "Pro", 6000),
            InvoiceLine("marketplace", "compute for device x", 250, quantity=25_000),
        ],
    )
    assert [i.number for i in (first, second, next_year, mixed)] == [
        "YGG-2025-000001",
        "YGG-2025-000002",
        "YGG-2026-000001",
        "YGG-2026-000002",
    ]
    assert mixed.total_cents == 4750
    with pytest.raises(Invalid):
        await issue(store, ada, ms(2026, 3, 1), [])
    with pytest.raises(Exception):  # noqa: B017, PT011 - a kind that is no name
        await issue(store, ada, ms(2026, 3, 1), [InvoiceLine("Bad Kind!", "x", 1)])
    assert len((await Invoices(store.db).list(ada)).items) == 3


async def test_an_issued_invoice_cannot_be_changed_or_deleted(store: Store) -> None:
    ada = await user(store, "ada")
    invoice = await issue(store, ada, ms(2025, 3, 1), FEE)
    for sql in (
        "UPDATE invoices SET total_cents = 1 WHERE invoice_id = $1",
        "DELETE FROM invoices WHERE invoice_id = $1",
    ):

        async def tamper(tx: Tx, sql: str = sql) -> None:
            await tx.execute(sql, invoice.invoice_id)

        with pytest.raises(Exception, match="immutable"):
            await store.db.write(tamper)
    assert await Invoices(store.db).get(ada, invoice.invoice_id) == invoice


async def test_a_user_sees_only_their_own_invoices_page_by_page(store: Store) -> None:
    ada, bob = await user(store, "ada"), await user(store, "bob")
    mine = [await issue(store, ada, ms(2025, 1, day), FEE) for day in range(1, 6)]
    theirs = await issue(store, bob, ms(2025, 1, 3), FEE)
    invoices = Invoices(store.db)
    with pytest.raises(NotFound):
        await invoices.get(ada, theirs.invoice_id)
    with pytest.raises(NotFound):
        await invoices.get(bob, mine[0].invoice_id)
    seen: list[str] = []
    cursor = None
    while True:
        page = await invoices.list(ada, cursor=cursor, limit=2)
        seen += [i.invoice_id for i in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == [i.invoice_id for i in reversed(mine)]
    with pytest.raises(Invalid):
        await invoices.list(ada, cursor="not-a-cursor!")


async def test_the_printable_page_is_self_contained_and_escaped(store: Store) -> None:
    ada = await user(store, "ada")
    hostile = '<script>alert("x")</script><img src="https://evil.example/x.png">'
    invoice = await issue(
        store,
        ada,
        ms(2025, 3, 1),
        [InvoiceLine("subscription", hostile, 3000), InvoiceLine("usage", "tokens & more", 13)],
    )
    page = render_html(invoice)
    assert page.startswith("<!DOCTYPE html>\n<html")
    assert "<script" not in page
    assert "<img" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "tokens &amp; more" in page
    # Nothing is loaded from anywhere: no element that fetches, no script, a strict policy.
    tags = Tags()
    tags.feed(page)
    assert tags.names <= {"html", "head", "meta", "title", "style", "body", "h1", "p", "br"} | {
        "table",
        "thead",
        "tbody",
        "tfoot",
        "tr",
        "th",
        "td",
    }
    assert not tags.attributes & {"src", "href", "srcset", "action", "data", "style"}
    assert "url(" not in page
    assert "@import" not in page
    assert "default-src 'none'" in page
    assert invoice.number in page
    assert "30.00 EUR" in page
    assert "30.13 EUR" in page
    assert "TEST MODE" in page
