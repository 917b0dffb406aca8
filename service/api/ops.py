"""Operations: /healthz, /readyz, /metrics (on the API and on the writer/consumer admin port), and the
API's own description: /openapi.json, /docs and its assets."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from governance.problem import MEDIA_TYPE, problem_body
from service.api.context import json_response
from service.api.docs_page import DOCS_ASSETS, DOCS_CSP, DOCS_HTML, docs_asset
from service.api.openapi import openapi_document
from service.api.problems import not_found
from service.api.readiness import Readiness, ReadinessCheck


async def readiness_response(readiness: Readiness) -> Response:
    checks = await readiness.status()
    failing = [name for name, state in checks.items() if state != "ok"]
    if failing:
        return Response(problem_body(503, f"not ready: {', '.join(failing)}", title="Not Ready", checks=checks),
                        status_code=503, media_type=MEDIA_TYPE)
    return json_response({"status": "ready", "checks": checks})


def ops_routes(registry: CollectorRegistry, readiness: Sequence[ReadinessCheck]) -> list[BaseRoute]:
    """/healthz, /readyz, /metrics: the same on the API and on the writer/consumer admin port."""

    async def healthz(request: Request) -> Response:
        return json_response({"status": "ok"})

    checked = Readiness(readiness)  # cached for a second: probes cannot turn into a load on the database

    async def readyz(request: Request) -> Response:
        return await readiness_response(checked)

    async def metrics(request: Request) -> Response:
        # OpenMetrics when the scraper asks for it (Prometheus does): the format that carries exemplars.
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(registry), headers={"Content-Type": content_type})

    return [Route("/healthz", healthz, methods=["GET"]), Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"])]


def docs_routes() -> list[BaseRoute]:
    async def openapi(request: Request) -> Response:
        return json_response(openapi_document())

    async def docs(request: Request) -> Response:
        return HTMLResponse(DOCS_HTML, headers={"Content-Security-Policy": DOCS_CSP})

    async def asset(request: Request) -> Response:
        name = request.path_params["asset"]
        body = docs_asset(name)
        if body is None:
            raise not_found("file")
        media = "text/javascript; charset=utf-8" if name == "init.js" else DOCS_ASSETS[name]
        return Response(body, media_type=media, headers={"Cache-Control": "public, max-age=86400"})

    return [Route("/openapi.json", openapi, methods=["GET"]), Route("/docs", docs, methods=["GET"]),
            Route("/docs/{asset}", asset, methods=["GET"])]
