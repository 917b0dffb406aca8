"""One meterd process: the roles it runs, in start-up order, and the graceful drain on SIGINT/SIGTERM.

Drain order matters for "an acknowledged record is never lost": first stop accepting (HTTP and
gRPC servers finish in-flight requests, each of which is acknowledged only once its log made it
durable), then close the log's writer side (commits a queued group, flushes the producer), then
stop the consumer (the database log: counts what the log holds, up to consumer.drain_seconds;
Kafka: flushes sums and offsets in one transaction), then the database.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from starlette.requests import Request
from starlette.routing import BaseRoute, Mount, Router

from profiling import Profiler, ProfilingSettings
from service.api.admin_guard import AdminOnly, as_bearer
from service.api.app import ApiContext, ReadinessCheck, build_admin_app, build_api
from service.auth import Authenticator, bearer_token
from service.billing_close import PeriodCloser
from service.config import Settings
from service.governance_setup import (
    GuardedRepository,
    bind_authenticator,
    build_governance,
    grpc_client_key,
    http_client_key,
    outbound,
)
from service.grpc_writer import TrafficWriterServicer, build_grpc_server
from service.ingest.writer import IngestService
from service.metrics import PipelineMetrics
from service.pipeline.db_consumer import DatabaseLogConsumer
from service.pipeline.kafka_consumer import AggregatingConsumer
from service.pipeline.kafka_log import BatchProducer, ensure_topics
from service.pipeline.logs import BatchLog, DatabaseLog, KafkaLog
from service.runtime.datadir import StartupError
from service.runtime.gc_tuning import tune_gc_for_serving
from service.runtime.http_server import HttpServer
from service.runtime.startup import binding, check_port_free, open_database, port_in_use
from service.storage import Repository
from service.storage.ledger import AlreadyApplied, Ledger, LogRowsTaken, OffsetConflict
from service.webhooks import WebhookDispatcher

log = logging.getLogger("meterd")
ROLES = ("api", "writer", "consumer")


@dataclass
class Endpoints:
    http: str | None = None
    grpc: str | None = None
    admin: str | None = None
    log: str | None = None


@dataclass
class MeterdProcess:
    settings: Settings
    roles: tuple[str, ...]
    admin_token: str
    # A writer under `meterd up --workers N`: the supervisor checked and holds the port, shared by SO_REUSEPORT.
    shared_grpc_port: bool = False
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    endpoints: Endpoints = field(default_factory=Endpoints)

    def __post_init__(self) -> None:
        disable_created_metrics()  # no *_created series: they double the series count for nothing
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.metrics = PipelineMetrics(self.registry)
        self._stops: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        self._stop_requested = asyncio.Event()

    async def start(self) -> None:
        s = self.settings
        self._check_ports()  # before any work: a busy port is the commonest start-up failure
        db = await open_database(s)  # then the database: both fail in one line, before anything logs
        self._stops.append(("database", db.close))
        gov = build_governance(s.governance, registry=self.registry, service_name=s.service_name)
        self._stops.append(("governance", gov.aclose))
        self.governance = gov
        profiler = Profiler(_profiling_settings(s), registry=self.registry)
        await profiler.start()
        self._stops.append(("profiler", profiler.aclose))
        self.profiler = profiler

        await db.migrate()
        for node, region in s.billing.node_regions.items():  # config names win at each start
            if not await Repository(db).set_node_region(node, region):
                log.warning("region map full: node %s stays in the default region", node)
        # Losing a race to another consumer is not the database failing.
        db_breaker = outbound(gov, "database", s.governance, fail_max=5, reset_timeout=5.0,
                              exclude=(OffsetConflict, LogRowsTaken, AlreadyApplied))
        repo: Repository = GuardedRepository(Repository(db), db_breaker)  # type: ignore[assignment]
        books = Ledger(db, future_s=s.ingest.max_future_seconds)
        books.on_crossings = self.metrics.count_crossings
        books.on_saturated = self.metrics.usage_saturated.inc
        ledger: Ledger = GuardedRepository(books, db_breaker)  # type: ignore[assignment]
        auth = Authenticator(repo, self.admin_token)
        bind_authenticator(gov, auth)  # the chain's `auth` plugin keys quota by principal from here on

        async def db_ready() -> str | None:
            await db.ping()
            return None

        readiness: list[ReadinessCheck] = [db_ready]
        if s.kafka.bootstrap_servers:
            ingest, consumer = await self._kafka_pipeline(ledger, repo, gov, readiness)
        else:
            ingest, consumer = await self._database_pipeline(ledger, repo)
        if consumer is not None:
            # "ready" should mean written usage shows up: wait for the first group assignment
            # (a Kafka group takes a few seconds), but do not hang start-up on a group with no partitions.
            try:
                await asyncio.wait_for(consumer.assigned.wait(), 30)
            except TimeoutError:
                log.warning("consumer got no partitions within 30 s; continuing")

            async def consumer_ready() -> str | None:
                return None if consumer.healthy else "consumer has not completed a healthy poll"

            readiness.append(consumer_ready)
            # Quota-alert webhooks go out from the consumer role, which records the events.
            webhooks = WebhookDispatcher(repo, s.webhooks, self.metrics, mode=s.mode or "production")
            await webhooks.start()
            self._stops.append(("webhooks", webhooks.stop))
            grace = s.billing.auto_close_after_seconds
            if grace != 0:  # closes ended months once no late record can arrive for them
                closer = PeriodCloser(repo, s.ingest.max_past_seconds if grace is None else grace,
                                      s.billing.default_region, s.billing.close_poll_seconds)
                await closer.start()
                self._stops.append(("period closer", closer.stop))

        admin_only = self._admin_check()
        # The guard answers 401/403 like every other endpoint; the profiler re-checks admin itself.
        profiles_app = AdminOnly(Router(routes=profiler.starlette_routes(admin_only)), auth)
        extra_routes: list[BaseRoute] = [Mount("/debug/profiles", app=profiles_app)]
        servers_stop: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        if "writer" in self.roles:
            assert ingest is not None
            interceptor = gov.grpc_interceptor(client_key=grpc_client_key)
            servicer = TrafficWriterServicer(ingest, auth, governor=interceptor,
                                             max_streams_per_key=s.grpc.max_streams_per_key)
            grpc_server, health = build_grpc_server(servicer, max_message_bytes=s.grpc.max_message_bytes,
                                                    interceptors=[interceptor], options=[
                *s.grpc.channel_options(), *([("grpc.so_reuseport", 1)] if self.shared_grpc_port else [])])
            if not self.shared_grpc_port:
                check_port_free("grpc", s.grpc.host, s.grpc.port)
            try:
                port = grpc_server.add_insecure_port(f"{s.grpc.host}:{s.grpc.port}")
            except RuntimeError:  # lost a race for the port since the check
                raise port_in_use("grpc", s.grpc.host, s.grpc.port) from None
            await grpc_server.start()
            for name in ("", "meterd.v1.TrafficWriter"):
                await health.set(name, _serving())
            self.endpoints.grpc = f"{s.grpc.host}:{port}"

            async def stop_grpc() -> None:
                await health.enter_graceful_shutdown()
                await grpc_server.stop(grace=10)

            servers_stop.append(("grpc", stop_grpc))
        if "api" in self.roles:
            app = build_api(ApiContext(repo=repo, auth=auth, ingest=ingest, registry=self.registry, ledger=ledger,
                                       max_body_bytes=s.http.max_body_bytes,
                                       body_timeout=s.http.body_timeout_seconds, readiness=readiness,
                                       extra_routes=extra_routes, default_region=s.billing.default_region,
                                       max_nodes_per_account=s.ingest.max_nodes_per_account))
            http = HttpServer(gov.asgi(app, client_key=http_client_key), s.http.host, s.http.port, name="api",
                              header_timeout=s.http.header_timeout_seconds, max_header_bytes=s.http.max_header_bytes)
            with binding("http", s.http.host, s.http.port):
                await http.start()
            self.endpoints.http = f"http://{s.http.host}:{http.port}"
            servers_stop.append(("http", http.stop))
        else:
            admin_app = gov.asgi(build_admin_app(self.registry, readiness, extra_routes), client_key=http_client_key)
            admin = HttpServer(admin_app, s.admin.host, s.admin.port, name="admin",
                               header_timeout=s.http.header_timeout_seconds, max_header_bytes=s.http.max_header_bytes)
            with binding("admin", s.admin.host, s.admin.port):
                await admin.start()
            self.endpoints.admin = f"http://{s.admin.host}:{admin.port}"
            servers_stop.append(("admin http", admin.stop))
        # Servers stop first (reverse of list order below), then producer, consumer, db, broker.
        self._stops.extend(servers_stop)
        tune_gc_for_serving()  # start-up allocations are done: see gc_tuning for why and what it buys

    async def _database_pipeline(self, ledger: Ledger, repo: Repository) -> tuple[IngestService | None, Any]:
        """No broker configured: the log is a table in meterd's own database."""
        s = self.settings
        self.endpoints.log = "database table ingest_log"
        consumer = None
        if "consumer" in self.roles:
            consumer = DatabaseLogConsumer(ledger, s.consumer, self.metrics)
            await consumer.start()
            self._stops.append(("consumer", consumer.stop))
        ingest = None
        if "api" in self.roles or "writer" in self.roles:
            wake = consumer.wake if consumer is not None else (lambda: None)
            batch_log: BatchLog = DatabaseLog(ledger, s.ingest, self.metrics, on_append=wake)
            self._stops.append(("log writer", batch_log.aclose))
            ingest = IngestService(s, repo, batch_log, self.metrics)
        return ingest, consumer

    async def _kafka_pipeline(self, ledger: Ledger, repo: Repository, gov: Any,
                              readiness: list[ReadinessCheck]) -> tuple[IngestService | None, Any]:
        s = self.settings
        bootstrap = s.kafka.bootstrap_servers
        self.endpoints.log = f"Kafka {bootstrap}"
        if s.kafka.create_topics:
            await ensure_topics(bootstrap, s.kafka)
        ingest = None
        if "api" in self.roles or "writer" in self.roles:
            kafka_breaker = outbound(gov, "kafka", s.governance, fail_max=5, reset_timeout=5.0)
            producer = BatchProducer(bootstrap, s.kafka, self.metrics, guard=kafka_breaker.call)
            await producer.start()
            self._stops.append(("producer", producer.stop))
            batch_log = KafkaLog(ledger, producer, s.kafka.topic, s.ingest, self.metrics)
            self._stops.append(("log writer", batch_log.aclose))
            ingest = IngestService(s, repo, batch_log, self.metrics)

            async def kafka_ready() -> str | None:
                return None if await producer.partitions_ready(s.kafka.topic) else "Kafka topic metadata unavailable"

            readiness.append(kafka_ready)
        consumer = None
        if "consumer" in self.roles:
            consumer = AggregatingConsumer(bootstrap, s, ledger, self.metrics)
            await consumer.start()
            self._stops.append(("consumer", consumer.stop))
        return ingest, consumer

    def _check_ports(self) -> None:
        s = self.settings
        ports = [("grpc", s.grpc.host, s.grpc.port)] if "writer" in self.roles and not self.shared_grpc_port else []
        ports.append(("http", s.http.host, s.http.port) if "api" in self.roles else
                     ("admin", s.admin.host, s.admin.port))
        busy = []
        for kind, host, port in ports:
            try:
                check_port_free(kind, host, port)
            except StartupError as exc:
                busy.append(str(exc))
        if busy:  # all of them in one line: fixing one should not reveal the next
            raise StartupError("; ".join(busy))

    def _admin_check(self) -> Callable[[Request], bool]:
        expected = self.admin_token.encode()

        def is_admin(request: Request) -> bool:
            token = bearer_token(as_bearer(request.headers.get("authorization")))
            return token is not None and hmac.compare_digest(token.encode(), expected)

        return is_admin

    def request_stop(self) -> None:
        self._stop_requested.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_stop)

    async def wait(self) -> None:
        await self._stop_requested.wait()

    async def stop(self) -> None:
        for name, stop in reversed(self._stops):
            try:
                await stop()
            except Exception:
                log.exception("error while stopping", extra={"component": name})
        self._stops.clear()


def _profiling_settings(s: Settings) -> ProfilingSettings:
    if "service_name" in s.profiling.model_fields_set:
        return s.profiling
    return s.profiling.model_copy(update={"service_name": s.service_name})


def _serving() -> int:
    from grpc_health.v1 import health_pb2

    return health_pb2.HealthCheckResponse.SERVING
