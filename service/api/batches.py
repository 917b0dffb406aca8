"""GET /v1/batches/{batch_id}: "did you count my batch?", asked with the credentials that wrote it.

Batch ids are scoped by the writing principal (service.ingest.writer.dedupe_key), so the lookup
can only ever find the caller's own batches; another principal's id answers 404 like an unknown one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from service.api.problems import not_found
from service.api.timeparams import format_rfc3339
from service.auth import Principal
from service.ingest.writer import dedupe_key
from service.storage.ledger import Ledger


def batch_lookup(ledger: Ledger, principal: Callable[[Request], Awaitable[Principal]],
                 respond: Callable[[Any], Response]) -> Callable[[Request], Awaitable[Response]]:
    async def lookup(request: Request) -> Response:
        who = await principal(request)
        batch_id = request.path_params["batch_id"]
        state = (await ledger.batch_states([dedupe_key(who, batch_id)])).get(dedupe_key(who, batch_id))
        if state is None:
            raise not_found("batch")
        applied = state.applied_at_ms is not None
        return respond({
            "batch_id": batch_id,
            # pending: acknowledged and durable in the log, not yet counted (Kafka mode: or claimed
            # by a write whose produce failed and that its client is expected to retry)
            "status": "applied" if applied else "pending",
            "records": state.records,
            "accepted_at": format_rfc3339(state.claimed_at),
            "applied_at": format_rfc3339(state.applied_at_ms / 1000) if state.applied_at_ms is not None else None,
        })

    return lookup
