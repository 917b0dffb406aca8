"""POST /v1/traffic (the JSON twin of gRPC Write) and GET /v1/batches/{batch_id}: "did you count my batch?".

Batch ids are scoped by the writing principal (service.ingest.writer.dedupe_key), so the lookup
can only ever find the caller's own batches; another principal's id answers 404 like an unknown one.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from service.api.bodies import read_json
from service.api.context import ApiContext, json_response
from service.api.problems import Problem, not_found
from service.api.timeparams import format_rfc3339
from service.api.traffic_json import parse_traffic
from service.ingest.writer import dedupe_key


def ingest_routes(ctx: ApiContext) -> list[BaseRoute]:
    async def post_traffic(request: Request) -> Response:
        principal = await ctx.principal(request)
        if ctx.ingest is None:
            raise Problem(503, "Service Unavailable", "this process does not accept traffic")
        batch_id, records = parse_traffic(await read_json(request, ctx.max_body_bytes, ctx.body_timeout))
        result = await ctx.ingest.write(principal, batch_id, records, "http")
        return json_response({"batch_id": result.batch_id, "accepted": result.accepted,
                              "duplicate": result.duplicate}, 202)

    async def batch_lookup(request: Request) -> Response:
        who = await ctx.principal(request)
        batch_id = request.path_params["batch_id"]
        state = (await ctx.ledger.batch_states([dedupe_key(who, batch_id)])).get(dedupe_key(who, batch_id))
        if state is None:
            raise not_found("batch")
        applied = state.applied_at_ms is not None
        return json_response({
            "batch_id": batch_id,
            # pending: acknowledged and durable in the log, not yet counted (Kafka mode: or claimed
            # by a write whose produce failed and that its client is expected to retry)
            "status": "applied" if applied else "pending",
            "records": state.records,
            "accepted_at": format_rfc3339(state.claimed_at),
            "applied_at": format_rfc3339(state.applied_at_ms / 1000) if state.applied_at_ms is not None else None,
        })

    return [Route("/v1/traffic", post_traffic, methods=["POST"]),
            Route("/v1/batches/{batch_id}", batch_lookup, methods=["GET"])]
