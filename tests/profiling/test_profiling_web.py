"""The /debug/profiles routes: auth, problem+json, listing, downloads, start/stop, Pyroscope upload."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import uvicorn
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from profiling import CaptureInfo, CaptureStore, Profiler, ProfilingSettings

TOKEN = "web-token"


def build(tmp_path: Path, **overrides) -> tuple[Profiler, httpx.AsyncClient, CollectorRegistry]:
    registry = CollectorRegistry()
    settings = ProfilingSettings(
        service_name="svc", directory=tmp_path / "captures", watchdog={"enabled": False}, **overrides
    )
    profiler = Profiler(settings, registry=registry)

    def authorize(request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {TOKEN}"

    app = Starlette(routes=[Mount("/debug/profiles", routes=profiler.starlette_routes(authorize))])
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    return profiler, client, registry


def seed(profiler: Profiler) -> CaptureInfo:
    store = CaptureStore(profiler.directory, "svc")
    store.prepare()
    when = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    cid = store.new_capture_id(when, 77)
    store.write_text(cid, "flamegraph", '<svg xmlns="http://www.w3.org/2000/svg"><title>x</title></svg>')
    store.write_text(cid, "folded", "main (app.py:1) 5\n")
    store.write_meta(CaptureInfo(cid, "svc", 77, "cpu", "completed", when, when, samples=5))
    (profiler.directory.parent / "secret.txt").write_text("top secret")
    info = store.read(cid)
    assert info is not None
    return info


async def test_unauthorized_gets_problem_json(tmp_path):
    profiler, client, _ = build(tmp_path)
    async with client:
        for method, path in [("GET", "/"), ("GET", "/index.json"), ("POST", "/start"), ("POST", "/stop"),
                             ("GET", "/files/x.svg")]:
            response = await client.request(method, "/debug/profiles" + path, headers={"Authorization": ""})
            assert response.status_code == 401, path
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["status"] == 401 and response.headers["www-authenticate"] == "Bearer"
            response = await client.request(method, "/debug/profiles" + path, headers={"Authorization": "Bearer no"})
            assert response.status_code == 403
            assert set(response.json()) >= {"type", "title", "status", "detail"}
    assert not profiler.directory.exists()  # nothing was started


async def test_index_json_html_and_downloads(tmp_path):
    profiler, client, _ = build(tmp_path)
    info = seed(profiler)
    async with client:
        data = (await client.get("/debug/profiles/index.json")).json()
        [capture] = data["captures"]
        assert capture["id"] == info.id and capture["trigger"] == "cpu" and data["running"] is None
        svg_link = capture["links"]["flamegraph"]
        assert svg_link == f"http://test/debug/profiles/files/{info.files['flamegraph']}"
        svg = await client.get(svg_link)
        assert svg.status_code == 200 and svg.headers["content-type"] == "image/svg+xml"
        assert "<svg" in svg.text
        folded = await client.get(capture["links"]["folded"])
        assert folded.headers["content-type"].startswith("text/plain") and "main (app.py:1)" in folded.text
        page = await client.get("/debug/profiles/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert info.id in page.text and 'href="/debug/profiles/files/' in page.text
        assert 'action="/debug/profiles/start"' in page.text


@pytest.mark.parametrize(
    "name", ["..%2Fsecret.txt", "%2E%2E%2Fsecret.txt", "secret.txt", "20260304T050607Z_77_svc_alloc.txt"]
)
async def test_downloads_refuse_anything_not_listed(tmp_path, name):
    profiler, client, _ = build(tmp_path)
    seed(profiler)
    async with client:
        response = await client.get(f"/debug/profiles/files/{name}")
        assert response.status_code == 404
        assert "top secret" not in response.text


async def test_start_without_py_spy_is_503_with_the_fix(tmp_path):
    profiler, client, registry = build(tmp_path, py_spy_path=str(tmp_path / "missing"))
    async with client:
        response = await client.post("/debug/profiles/start", json={"duration_s": 5})
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        body = response.json()
        assert "pip install py-spy" in body["detail"] and body["fix"]
        assert (await client.get("/debug/profiles/index.json")).status_code == 200  # still serving
        stop = await client.post("/debug/profiles/stop")
        assert stop.status_code == 409 and stop.json()["status"] == 409


async def test_bad_duration_is_400(tmp_path):
    _, client, _ = build(tmp_path)
    async with client:
        for body in ({"duration_s": "soon"}, {"duration_s": -1}, {"duration_s": 1e9}, {"tracemalloc": "maybe"}):
            response = await client.post("/debug/profiles/start", json=body)
            assert response.status_code == 400, body


def _busy(stop: threading.Event) -> None:
    while not stop.is_set():
        sum(i * i for i in range(3000))


class Receiver:
    """A real HTTP server standing in for Pyroscope's /ingest, recording what it receives."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.got = threading.Event()

        async def ingest(request: Request) -> PlainTextResponse:
            self.requests.append((dict(request.query_params), await request.body()))
            self.got.set()
            return PlainTextResponse("")

        self.app = Starlette(routes=[Route("/ingest", ingest, methods=["POST"])])
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning"))
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve([self.sock])), daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


async def test_real_capture_through_the_api_and_pyroscope_upload(tmp_path):
    with Receiver() as receiver:
        profiler, client, registry = build(tmp_path, pyroscope={"url": receiver.url})
        stop = threading.Event()
        worker = threading.Thread(target=_busy, args=(stop,), daemon=True)
        worker.start()
        try:
            async with client:
                started = await client.post(
                    "/debug/profiles/start", data={"duration_s": "30", "tracemalloc": "true"}
                )
                assert started.status_code == 303  # the HTML form goes back to the index
                data = (await client.get("/debug/profiles/index.json")).json()
                assert data["running"]["trigger"] == "api"
                page = (await client.get("/debug/profiles/")).text
                assert "Stop capture" in page and 'action="/debug/profiles/stop"' in page
                assert registry.get_sample_value("profiling_capture_in_progress") == 1
                again = await client.post("/debug/profiles/start")
                assert again.status_code == 409
                await asyncio.sleep(1.0)
                stopped = await client.post("/debug/profiles/stop")
                assert stopped.status_code == 200
                info = stopped.json()
                assert info["status"] == "completed" and info["samples"] > 0
                assert set(info["files"]) == {"folded", "flamegraph", "threads", "alloc", "meta"}
                assert info["allocation_sites"] is True  # asked for in the form
                assert info["py_spy_summary"].startswith("Samples:")
        finally:
            stop.set()
            await profiler.aclose()
        assert registry.get_sample_value("profiling_captures_total", {"trigger": "api"}) == 1
        assert registry.get_sample_value("profiling_capture_in_progress") == 0
        assert await asyncio.to_thread(receiver.got.wait, 10)
        params, body = receiver.requests[0]
        assert params["name"] == "svc.cpu" and params["format"] == "folded" and params["sampleRate"] == "100"
        assert int(params["until"]) > int(params["from"]) > 0
        assert b"_busy" in body
        assert b'process ' in body and b':"' not in body  # command lines stay on the machine


async def test_aclose_stops_a_running_capture(tmp_path):
    profiler, client, _ = build(tmp_path)
    await profiler.start()
    info = await profiler.start_capture("api", duration_s=30)
    await profiler.aclose()
    [listed] = profiler.list_captures()
    assert listed.id == info.id and listed.status == "completed" and listed.stop_reason == "shutdown"
    with contextlib.suppress(Exception):
        await client.aclose()


async def test_allocation_tracing_is_bounded_within_a_long_capture(tmp_path):
    import tracemalloc

    profiler, client, _ = build(tmp_path, tracemalloc_max_s=0.2)
    try:
        await profiler.start_capture("memory", duration_s=30)  # memory captures trace by default
        assert tracemalloc.is_tracing()
        for _ in range(100):
            await asyncio.sleep(0.05)
            if not tracemalloc.is_tracing():
                break
        assert not tracemalloc.is_tracing()  # the window closed while the capture runs on
        assert profiler.current_capture() is not None
        info = await profiler.stop_capture()
        assert info.allocation_sites is True
        assert "Allocation sites that grew" in (profiler.directory / info.files["alloc"]).read_text()
    finally:
        await profiler.aclose()
        await client.aclose()


async def test_disabled_profiler_lists_but_does_not_capture(tmp_path):
    registry = CollectorRegistry()
    profiler = Profiler(ProfilingSettings(enabled=False, directory=tmp_path / "c"), registry=registry)
    await profiler.start()  # installs nothing
    app = Starlette(routes=[Mount("/p", routes=profiler.starlette_routes(lambda request: True))])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        response = await client.post("/p/start")
        assert response.status_code == 503 and "profiling.enabled" in response.json()["detail"]
        assert (await client.get("/p/index.json")).json()["captures"] == []
    await profiler.aclose()


async def test_cross_origin_posts_are_refused(tmp_path):
    profiler, client, _ = build(tmp_path, py_spy_path=str(tmp_path / "missing"))
    async with client:
        evil = await client.post("/debug/profiles/start", headers={"Origin": "http://evil.example"})
        assert evil.status_code == 403 and evil.headers["content-type"] == "application/problem+json"
        same = await client.post("/debug/profiles/start", headers={"Origin": "http://test"})
        assert same.status_code == 503  # got through to the (missing) py-spy
    assert [c.status for c in profiler.list_captures()] == ["failed"]  # only the same-origin attempt


def test_process_frames_lose_their_command_line_before_upload():
    from profiling.pyroscope import redact_process_frames

    folded = b'process 12:"app --token=abc";main (a.py:1) 5\nprocess 13:"x \\"q\\" y" 1\nmain (a.py:1) 3\n'
    assert redact_process_frames(folded) == b"process 12;main (a.py:1) 5\nprocess 13 1\nmain (a.py:1) 3\n"
    # A child's frame nests under its parent's (py-spy --subprocesses): redacted there too.
    nested = b'process 1;process 2:"python -m app --token=s3cret";main (a.py:1) 4\n'
    assert redact_process_frames(nested) == b"process 1;process 2;main (a.py:1) 4\n"
