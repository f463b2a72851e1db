"""Plans, the caller's subscription, usage and invoices.

Every route acts on the caller's own subscription and invoices only (the user id comes from the
token); another user's invoice answers 404 exactly like a missing one. Subscribing, changing the
plan, canceling and resuming take an ``Idempotency-Key`` header.
"""

from __future__ import annotations

import msgspec
from quart import Quart, Response
from quart_schema import (
    document_response,
    tag,
    validate_headers,
    validate_querystring,
    validate_request,
    validate_response,
)

from yggdrasil.billing import render_html

from ._auth import Guard, errors
from ._models import convert
from ._subscriptions_models import (
    ChangeQuery,
    CurrentSubscriptionOut,
    IdempotencyKeyHeader,
    InvoiceOut,
    InvoicePage,
    InvoicePageQuery,
    InvoiceQuery,
    PlanChangeOut,
    PlanIn,
    PlanList,
    PlanOut,
    SubscribedOut,
    SubscriptionOut,
    UsageOut,
    UsageReportOut,
)

_HTML_POLICY = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"


def install(app: Quart, guard: Guard) -> None:
    @app.get("/api/v1/plans")
    @tag(["subscriptions"])
    @validate_response(PlanList, 200)
    @errors(503)
    async def list_plans() -> PlanList:
        """The plans one may subscribe to, with their prices, token quotas and features."""
        plans = guard.domain().subscriptions.plans
        return PlanList(
            [
                PlanOut(
                    id=plan.id,
                    name=plan.name,
                    price_cents=plan.price_cents,
                    tokens=plan.tokens,
                    token_price_cents=plan.token_price_cents,
                    metered=plan.metered,
                    features=list(plan.features),
                    currency=plan.currency,
                )
                for plan in plans.all()
            ]
        )

    @app.get("/api/v1/subscriptions")
    @tag(["subscriptions"])
    @validate_response(CurrentSubscriptionOut, 200)
    @errors(503)
    async def get_subscription() -> CurrentSubscriptionOut:
        """The caller's subscription (``free`` without one) and this period's token usage."""
        principal = guard.principal()
        domain = guard.domain()
        current = await domain.subscriptions.current(principal.user_id)
        usage = await domain.usage.usage(principal.user_id)
        return CurrentSubscriptionOut(
            convert(current, SubscriptionOut), convert(usage.current, UsageOut)
        )

    @app.post("/api/v1/subscriptions")
    @tag(["subscriptions"])
    @validate_headers(IdempotencyKeyHeader)
    @validate_request(PlanIn)
    @validate_response(SubscribedOut, 201)
    @errors(400, 402, 404, 409, 413, 422, 503)
    async def subscribe(data: PlanIn, headers: IdempotencyKeyHeader) -> tuple[SubscribedOut, int]:
        """Subscribe to a plan: the first period (a calendar month from now) is charged at once
        to the default payment method (402 ``payment_declined``) and its invoice issued. 409
        ``already_subscribed`` with a current subscription (change it with PUT); 422
        ``free_plan`` for ``free``; 404 ``unknown_plan``."""
        principal = guard.principal()
        key = headers.idempotency_key
        done = await guard.domain().subscriptions.subscribe(principal.user_id, data.plan, key=key)
        return convert(done, SubscribedOut), 201

    @app.put("/api/v1/subscriptions")
    @tag(["subscriptions"])
    @validate_headers(IdempotencyKeyHeader)
    @validate_querystring(ChangeQuery)
    @validate_request(PlanIn)
    @validate_response(PlanChangeOut, 200)
    @errors(400, 402, 404, 409, 413, 422, 503)
    async def change_plan(
        data: PlanIn, query_args: ChangeQuery, headers: IdempotencyKeyHeader
    ) -> PlanChangeOut:
        """Upgrade or downgrade at once, prorated: the answer states the plans and prices
        before and after, the credit for the unused part of the old plan and the charge for the
        new plan's rest of the period (each rounded down to a cent); the difference is charged
        (``due_cents``) or credited to the balance (``credited_cents``). ``?preview=true`` only
        states the amounts. 409 ``not_subscribed``, ``same_plan``, ``past_due``, ``canceled``
        (resume first)."""
        principal = guard.principal()
        subscriptions = guard.domain().subscriptions
        if query_args.preview:
            preview = await subscriptions.preview_change(principal.user_id, data.plan)
            return convert(preview, PlanChangeOut)  # type: ignore[no-any-return]
        key = headers.idempotency_key
        change = await subscriptions.change(principal.user_id, data.plan, key=key)
        return convert(change, PlanChangeOut)  # type: ignore[no-any-return]

    @app.delete("/api/v1/subscriptions")
    @tag(["subscriptions"])
    @validate_headers(IdempotencyKeyHeader)
    @validate_response(SubscriptionOut, 200)
    @errors(400, 409, 422, 503)
    async def cancel_subscription(headers: IdempotencyKeyHeader) -> SubscriptionOut:
        """Cancel at the end of the period: it stays usable until ``ends_at``, then the caller
        is on ``free``. Nothing is refunded. 409 ``not_subscribed``."""
        principal = guard.principal()
        key = headers.idempotency_key
        view = await guard.domain().subscriptions.cancel(principal.user_id, key=key)
        return convert(view, SubscriptionOut)  # type: ignore[no-any-return]

    @app.post("/api/v1/subscriptions/resume")
    @tag(["subscriptions"])
    @validate_headers(IdempotencyKeyHeader)
    @validate_response(SubscriptionOut, 200)
    @errors(400, 409, 422, 503)
    async def resume_subscription(headers: IdempotencyKeyHeader) -> SubscriptionOut:
        """Undo a cancellation before the period ends. 409 ``not_canceled``, ``period_over``."""
        principal = guard.principal()
        key = headers.idempotency_key
        view = await guard.domain().subscriptions.resume(principal.user_id, key=key)
        return convert(view, SubscriptionOut)  # type: ignore[no-any-return]

    @app.get("/api/v1/usage")
    @tag(["subscriptions"])
    @validate_response(UsageReportOut, 200)
    @errors(503)
    async def get_usage() -> UsageReportOut:
        """Cloud-LLM tokens of the current period (used, included, remaining; metered and
        their cost on a pay-per-token plan) and of the last periods."""
        principal = guard.principal()
        report = await guard.domain().usage.usage(principal.user_id)
        return convert(report, UsageReportOut)  # type: ignore[no-any-return]

    @app.get("/api/v1/invoices")
    @tag(["subscriptions"])
    @validate_querystring(InvoicePageQuery)
    @validate_response(InvoicePage, 200)
    @errors(422, 503)
    async def list_invoices(query_args: InvoicePageQuery) -> InvoicePage:
        """The caller's invoices, newest first."""
        principal = guard.principal()
        page = await guard.domain().subscriptions.invoices.list(
            principal.user_id, cursor=query_args.cursor, limit=query_args.limit
        )
        return convert(page, InvoicePage)  # type: ignore[no-any-return]

    @app.get("/api/v1/invoices/<invoice_id>")
    @tag(["subscriptions"])
    @validate_querystring(InvoiceQuery)
    @document_response(InvoiceOut, 200)
    @errors(404, 422, 503)
    async def get_invoice(invoice_id: str, query_args: InvoiceQuery) -> Response:
        """One of the caller's invoices as JSON, or - with ``?format=html`` or the id followed
        by ``.html`` - as a printable page (self-contained: no script, no external resource)."""
        principal = guard.principal()
        as_html = query_args.format == "html"
        if invoice_id.endswith(".html"):  # ids never contain a dot
            invoice_id, as_html = invoice_id.removesuffix(".html"), True
        invoice = await guard.domain().subscriptions.invoices.get(principal.user_id, invoice_id)
        if as_html:
            response = Response(render_html(invoice), content_type="text/html; charset=utf-8")
            response.headers["Content-Security-Policy"] = _HTML_POLICY
            return response
        body = msgspec.json.encode(convert(invoice, InvoiceOut))
        return Response(body, content_type="application/json")
