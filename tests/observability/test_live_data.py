"""Issue 5, acceptance 2: every dashboard query and every rule reads series a loaded meterd emits.

One scenario for the module: a real `meterd up` on a Kafka-protocol broker (Tansu) with a tight
quota on the balance route (its counters in a real Redis), a real `meterd relay` with two robots
(fake DingTalk endpoints, one of them failing), and a real Prometheus scraping both every second
with the shipped rule files (groups every 1 s, alert `for:` removed so alerts fire within the test).
Traffic covers HTTP and gRPC (including 4xx, 429 and WriteStream), usage reads, a profile capture, a
dead letter and relay notifications (firing, resolved, merged burst, truncated, failed sends). Then
faults: a failed capture, a quota storage outage (Redis hung by SIGSTOP: calls admitted, failures
counted) and a Kafka outage (the broker is killed) that opens the `kafka` breaker and feeds the
error SLI.

Then, through Prometheus's HTTP API as range queries over the scenario (what Grafana runs):
every dashboard expression, every recording rule expression, and every vector selector inside
any dashboard or rule expression (alert expressions are conditions, empty while healthy, so their
selectors prove each metric + label matcher they read has data; a recording rule's `x or y * 0`
fallback would hide a misspelt matcher in x, so its selectors are checked too). A result counts
only with a non-NaN sample. Series that exist only under a fault are listed in FAULT_ONLY with
the fault that produces them.

`$__rate_interval` stays 1m (artifacts.GRAFANA_VARIABLES): with 1 s scrapes, rate() over 1m has
data from the second scrape on, so no shorter window is needed.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.observability.artifacts import RULE_FILES, dashboard_expressions, grafana_to_promql
from tests.observability.faults import (
    Traffic,
    produce_undecodable,
    quota_storage_outage,
    symlinked_directory,
    trip_kafka_breaker,
)
from tests.observability.processes import RobotServer, running_meterd_up, running_relay
from tests.observability.promstack import Proc, running_prometheus
from tests.relay.fake_dingtalk import FakeDingTalk
from tests.relay.helpers import SECRET
from tests.support.broker import running_tansu
from tests.support.meterd import meterd_env
from tests.support.require import require_binary
from tests.support.servers import free_port, running_redis

# Faults the scenario injects, and what each one is.
FAULTS = {
    "capture_failure": "profile directory swapped for a symlink; POST /debug/profiles/start fails (unsafe_directory)",
    "quota_storage_outage": "the quota's Redis SIGSTOPped for 3 s; reads admitted (fail_open), failures counted",
    "kafka_outage": "the broker (Tansu) SIGKILLed; writes fail with UNAVAILABLE / 503 and the kafka breaker opens",
}
_SLI_GRPC_FAILURE = 'grpc_code=~"Unknown|Internal|Unavailable|DataLoss|DeadlineExceeded"'
# Selectors (canonical form, see `selectors`) that have data only because of an injected fault.
FAULT_ONLY: dict[str, str] = {
    # Failures are counted per reason, created on the first failure.
    'profiling_capture_failures_total{job=~".+"}': "capture_failure",
    "profiling_capture_failures_total": "capture_failure",
    # 5xx and server-fault gRPC codes: POST /v1/traffic and Write while Kafka is down.
    'http_server_request_duration_seconds_count{job=~".+", status_code=~"5.."}': "kafka_outage",
    'http_server_request_duration_seconds_count{status_code=~"5.."}': "kafka_outage",
    f'grpc_server_handled_total{{job=~".+", {_SLI_GRPC_FAILURE}}}': "kafka_outage",
    f"grpc_server_handled_total{{{_SLI_GRPC_FAILURE}}}": "kafka_outage",
    # Overload protection sheds only when calls fail or pile up: the outage makes both happen.
    'governance_rejections_total{plugin=~"adaptive|breaker"}': "kafka_outage",
    # The inbound SRE breaker's per-route gauge is created when it first has a drop probability.
    'governance_breaker_drop_ratio{job=~".+"}': "kafka_outage",
    "governance_breaker_drop_ratio": "kafka_outage",
    # Firing alerts keep the target's service label only when the alert keeps all labels:
    # MeterdDependencyBreakerOpen (governance_breaker_state == 1) during the outage.
    'ALERTS{alertstate="firing", service="meterd"}': "kafka_outage",
}

# What the traffic and faults must visibly have done (many series above exist at 0 from start-up,
# so "has data" alone would not show it): query -> what it shows.
SIGNALS: dict[str, str] = {
    'governance_rejections_total{plugin="quota"} > 0': "balance reads over the route's quota got 429",
    'profiling_captures_total{trigger="api"} > 0': "the API profile capture ran",
    "profiling_capture_in_progress == 1": "the capture was running during a scrape",
    "meterd_consumer_dlq_total > 0": "the undecodable message was dead-lettered",
    'meterd_relay_notifications_total{robot="oncall", result="delivered"} > 0': "notifications were delivered",
    'meterd_relay_alerts_merged_total{robot="oncall"} > 0': "the burst was merged",
    'meterd_relay_truncated_total{robot="oncall"} > 0': "the big notification was truncated",
    'meterd_relay_send_failures_total{robot="broken", reason="http_5xx"} > 0': "the failing robot's 5xx",
    'meterd_relay_notifications_total{robot="broken", result="rejected"} > 0': "the failing robot's refusal",
    'governance_breaker_state{breaker="kafka"} == 1': "the kafka breaker opened",
    # Counted per reason from start-up (at 0), so only a count above 0 shows the Redis outage.
    'governance_quota_storage_errors_total{reason="timeout"} > 0': "quota checks timed out on the hung Redis",
    'governance_quota_storage_errors_total{reason="breaker_open"} > 0': "then the quota_storage breaker answered",
    'governance_breaker_state{breaker="quota_storage"} == 1': "the quota_storage breaker opened",
    'governance_adaptive_sheds_total{priority="write", reason="inflight_cap"} > 0': "a write burst went past the cap",
    # Alerts (for: removed) that the faults must fire: the rules work on real series.
    'ALERTS{alertname="MeterdDependencyBreakerOpen", alertstate="firing", breaker="kafka"}': "the outage",
    'ALERTS{alertname="MeterdErrorBudgetBurn", alertstate="firing", severity="critical"}': "the outage's errors",
    'ALERTS{alertname="MeterdDlqGrowing", alertstate="firing"}': "the dead letter",
    'ALERTS{alertname="MeterdProfilingFailing", alertstate="firing", reason="unsafe_directory"}': "the failed captures",
    'ALERTS{alertname="MeterdRelayNotificationsFailing", alertstate="firing", robot="broken"}': "the robot's refusal",
}

DATA_DEADLINE_S = 30.0  # after the traffic: scrapes, rule evaluations and ALERTS catch up


# --- PromQL: vector selectors of an expression --------------------------------------------------

_TOKEN = re.compile(
    r"""(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
      | (?P<braces>\{(?:[^{}"']|"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')*\})
      | (?P<range>\[[^\]]*\])
      | (?P<number>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?[a-zA-Z]*)
      | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
      | (?P<punct>\S)""",
    re.X,
)
_MATCHER = re.compile(r"""\s*([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')\s*,?""")
_LABEL_LIST = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS = _LABEL_LIST | {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def _canonical(name: str, braces: str) -> str:
    matchers = [f"{label}{op}{value}" for label, op, value in _MATCHER.findall(braces[1:-1])]
    return f"{name}{{{', '.join(matchers)}}}" if matchers else name


def selectors(expr: str) -> list[str]:
    """The vector selectors of a PromQL expression, as `name{l="v", ...}` in written order."""
    tokens = [(m.lastgroup, m.group()) for m in _TOKEN.finditer(expr)]
    found: list[str] = []
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        after = tokens[i + 1] if i + 1 < len(tokens) else ("", "")
        if kind == "ident":
            word = text.lower()
            if word in _LABEL_LIST and after[1] == "(":
                i = next(j for j in range(i + 2, len(tokens)) if tokens[j][1] == ")") + 1
                continue
            # A keyword, a function or aggregation call, or an aggregation written `sum by (...) (...)`.
            if word in _KEYWORDS or after[1] == "(" or after[1].lower() in ("by", "without"):
                i += 1
                continue
            found.append(_canonical(text, after[1]) if after[0] == "braces" else text)
            i += 2 if after[0] == "braces" else 1
            continue
        if kind == "braces":
            found.append(_canonical("", text))
        i += 1
    return found


def test_selectors_parser() -> None:
    expr = (
        'sum by (job) (rate(a_total{x="1", y=~"a|b"}[5m])) / on (job) group_left(z) '
        "label_replace(b, \"t\", \"h\", \"\", \"\") or absent(up{job='j'}) > bool 0.5 unless c offset 5m"
    )
    assert selectors(expr) == ['a_total{x="1", y=~"a|b"}', "b", "up{job='j'}", "c"]


# --- the checks, as lists of (what to query, where it comes from) --------------------------------


def rule_documents() -> list[tuple[Path, dict[str, Any]]]:
    return [(f, yaml.safe_load(f.read_text())) for f in RULE_FILES]


def checks() -> dict[str, list[str]]:
    """PromQL to evaluate -> the panels / rules it comes from."""
    out: dict[str, list[str]] = {}

    def add(query: str, where: str) -> None:
        out.setdefault(query, []).append(where)

    for where, expr in dashboard_expressions():
        query = grafana_to_promql(expr)
        add(query, where)
        for sel in selectors(query):
            add(sel, f"{where}, selector")
    for path, doc in rule_documents():
        for group in doc["groups"]:
            for rule in group["rules"]:
                where = f"{path.name}: {'alert ' + rule['alert'] if 'alert' in rule else 'record ' + rule['record']}"
                if "record" in rule:
                    add(rule["expr"].strip(), where)
                for sel in selectors(rule["expr"]):
                    add(sel, f"{where}, selector")
    return out


# --- the scenario -------------------------------------------------------------------------------


def prometheus_config(workdir: Path, meterd: str, relay: str) -> Path:
    """Scrape jobs named and labelled like alerts/prometheus.yml's. `meterd up` is api, writer and
    consumer in one process (one /metrics), so each role's job scrapes that process."""
    rules = workdir / "rules"
    rules.mkdir()
    for path, doc in rule_documents():
        for group in doc["groups"]:
            group["interval"] = "1s"
            for rule in group["rules"]:
                rule.pop("for", None)  # fire at once: the conditions only last for the test
        (rules / path.name).write_text(yaml.safe_dump(doc))
    jobs = [("meterd-api", "api", meterd), ("meterd-writer", "writer", meterd),
            ("meterd-consumer", "consumer", meterd), ("meterd-relay", "relay", relay)]
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules/*.yml"],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [url.split("//")[1]],
                                                  "labels": {"service": "meterd", "role": role}}]}
            for job, role, url in jobs
        ],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    return workdir / "prometheus.yml"


@dataclass
class Outcome:
    start: float
    injected: dict[str, float]
    has_data: dict[str, bool]
    errors: dict[str, str]
    traffic_problems: list[str]
    outage_answers: dict[str, int]
    durations: dict[str, float]


def _has_data(client: httpx.Client, query: str, start: float, end: float) -> tuple[bool, str]:
    reply = client.post("/api/v1/query_range", data={"query": query, "start": start, "end": end, "step": "1s"})
    body = reply.json()
    if reply.status_code != 200 or body.get("status") != "success":
        return False, reply.text[:300]
    values = (v for series in body["data"]["result"] for _, v in series["values"])
    return any(not math.isnan(float(v)) for v in values), ""


def evaluate(
    prometheus: Proc, start: float, queries: list[str], deadline_s: float
) -> tuple[dict[str, bool], dict[str, str]]:
    """Polls until every query has data over [start, now] or the deadline passes."""
    has_data = dict.fromkeys(queries, False)
    errors: dict[str, str] = {}
    deadline = time.monotonic() + deadline_s
    with httpx.Client(base_url=prometheus.url, timeout=10) as client:
        while True:
            for query in [q for q, ok in has_data.items() if not ok]:
                has_data[query], error = _has_data(client, query, start, time.time())
                if error:
                    errors[query] = error
            if all(has_data.values()) or time.monotonic() > deadline:
                return has_data, errors
            time.sleep(1)


def _wait_scraped(prometheus: Proc, timeout: float = 30) -> None:
    """Until every target is up and the rules have seen it: meterd starts after Prometheus, and
    its MeterdTargetDown alert from before must not count as data for the scenario."""
    deadline = time.monotonic() + timeout
    targets: list[dict[str, Any]] = []
    with httpx.Client(base_url=prometheus.url, timeout=5) as client:
        while time.monotonic() < deadline:
            targets = client.get("/api/v1/targets").json()["data"]["activeTargets"]
            if targets and all(t["health"] == "up" for t in targets):
                down = client.get("/api/v1/query", params={"query": 'ALERTS{alertname="MeterdTargetDown"}'})
                if not down.json()["data"]["result"]:
                    return
            time.sleep(0.2)
    raise AssertionError(f"Prometheus targets not all up: {targets}")


def _pacer(seconds: float) -> Callable[[], None]:
    """Each call returns `seconds` after the previous one returned, so the rounds span scrapes."""
    last = [time.monotonic()]

    def wait() -> None:
        time.sleep(max(0.0, last[0] + seconds - time.monotonic()))
        last[0] = time.monotonic()

    return wait


def healthy_traffic(traffic: Traffic, failing_robot: FakeDingTalk, profiles: Path, injected: dict[str, float]) -> None:
    """Eight rounds of calls, 1.1 s apart: every counter and histogram moves across several
    scrapes (a series born with its final value has a rate of 0 and a NaN quantile)."""
    pace = _pacer(1.1)
    for i in range(8):
        traffic.http_round()
        traffic.grpc_round()
        if i in (1, 5):  # twice: the shed counter increases between two scrapes
            traffic.write_burst()
        if i == 0:
            traffic.profile("start", 201)
            traffic.relay_firing_and_resolved()
        if i == 2:
            produce_undecodable(traffic.meterd.kafka or "")
            traffic.relay_burst()
        if i == 3:
            traffic.profile("stop", 200)
            traffic.relay_big()
            traffic.relay_failing_robot(failing_robot, "broken")
        if i in (4, 6):  # twice, so the failure counter also increases between two scrapes
            injected.setdefault("capture_failure", time.time())
            with symlinked_directory(profiles):
                traffic.profile("start", 503)
        pace()


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    require_binary("prometheus")
    tmp = tmp_path_factory.mktemp("live-data")
    durations: dict[str, float] = {}
    began = phase = time.monotonic()

    def lap(name: str) -> None:
        nonlocal phase
        durations[name] = round(time.monotonic() - phase, 1)
        phase = time.monotonic()

    robots = RobotServer()
    try:
        oncall = robots.serve(FakeDingTalk(secret=SECRET))
        broken = robots.serve(FakeDingTalk(secret=SECRET, access_token="broken-robot-token-01"))
        # Prometheus first, with the ports the processes will get: its target discovery takes
        # seconds, which then overlap with meterd's start-up.
        env = meterd_env(tmp)
        meterd_url, relay_port = f"http://127.0.0.1:{env['METERD_HTTP__PORT']}", free_port()
        (tmp / "prometheus").mkdir()
        config = prometheus_config(tmp / "prometheus", meterd_url, f"http://127.0.0.1:{relay_port}")
        with (
            running_prometheus(config, tmp / "prometheus") as prometheus,
            running_relay(tmp, {"oncall": oncall, "broken": broken}, relay_port) as relay,
            running_tansu(tmp / "tansu") as tansu,
            running_redis() as redis,
            running_meterd_up(tmp, {**env, "METERD_KAFKA__BOOTSTRAP_SERVERS": tansu.bootstrap}, redis.url) as meterd,
            ThreadPoolExecutor(8) as pool,
        ):
            _wait_scraped(prometheus)
            start = time.time()  # data are looked for from here on
            lap("start processes")
            traffic = Traffic(meterd, relay, pool)
            injected: dict[str, float] = {}
            try:
                healthy_traffic(traffic, broken, tmp / "profiles", injected)
                lap("healthy traffic")
                injected["quota_storage_outage"] = time.time()
                quota_storage_outage(traffic, redis)
                lap("quota storage outage")
                injected["kafka_outage"] = time.time()
                tansu.kill()
                outage_answers = trip_kafka_breaker(traffic)
                lap("kafka outage")
            finally:
                traffic.close()
            has_data, errors = evaluate(prometheus, start, [*checks(), *SIGNALS], DATA_DEADLINE_S)
            lap("queries until data")
        durations["total"] = round(time.monotonic() - began, 1)
        yield Outcome(start, injected, has_data, errors, traffic.problems, outage_answers, durations)
    finally:
        robots.close()


# --- the tests ----------------------------------------------------------------------------------


def _listing(queries: list[str]) -> str:
    sources = checks()
    return "\n".join(f"- {q}\n    from: {'; '.join(sources[q][:4])}" for q in queries)


def test_scenario_traffic_behaved(outcome: Outcome) -> None:
    print("durations (s):", outcome.durations, "outage answers:", outcome.outage_answers)
    assert outcome.traffic_problems == []
    assert outcome.outage_answers.get("UNAVAILABLE", 0) > 0 and outcome.outage_answers.get("HTTP 503", 0) > 0


def test_every_query_is_valid(outcome: Outcome) -> None:
    assert outcome.errors == {}


def test_the_scenario_produced_each_signal(outcome: Outcome) -> None:
    missing = [f"- {q}: {what}" for q, what in SIGNALS.items() if not outcome.has_data[q]]
    assert not missing, "the scenario did not produce:\n" + "\n".join(missing)


def fault_of(query: str) -> str | None:
    """The fault a query's data depends on: its own FAULT_ONLY entry, else that of a selector in it."""
    if query in FAULT_ONLY:
        return FAULT_ONLY[query]
    return next((FAULT_ONLY[s] for s in selectors(query) if s in FAULT_ONLY), None)


def test_every_dashboard_and_rule_query_returns_data(outcome: Outcome) -> None:
    missing = [q for q in checks() if not outcome.has_data[q] and fault_of(q) is None]
    assert not missing, f"{len(missing)} queries returned no data:\n{_listing(missing)}"


def test_fault_only_series_have_data_because_the_fault_was_injected(outcome: Outcome) -> None:
    assert set(FAULT_ONLY.values()) <= set(FAULTS)
    assert set(outcome.injected) == set(FAULTS)
    missing = [q for q in checks() if not outcome.has_data[q] and fault_of(q) is not None]
    assert not missing, "queries of fault-only series without data (was the fault injected?):\n" + "\n".join(
        f"- {q}\n    fault: {FAULTS[fault_of(q) or '']}" for q in missing
    )


def test_fault_only_list_names_only_queried_selectors() -> None:
    stale = sorted(set(FAULT_ONLY) - set(checks()))
    assert stale == [], "FAULT_ONLY entries no dashboard or rule queries (any more)"
