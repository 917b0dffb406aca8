"""Schemathesis against the live /openapi.json: every operation, as the admin and as an account key.

Checks: no 5xx, responses match their schemas, status codes and content types are documented
(errors are declared as application/problem+json). Generated cases are positive (valid per the
schema) and negative (deliberately invalid). Path ids point at a real account half of the time, so
generated queries and bodies reach the handlers instead of stopping at a 404.

The operations are driven with their Hypothesis strategies (`APIOperation.as_strategy`) rather
than `schemathesis.pytest.from_fixture`: schemathesis 4.32's lazy pytest integration reads
`request.node._nodeid`, which pytest 9 no longer has.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.fuzz.conftest import FuzzAccounts
from tests.support.meterd_client import Meterd

CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance]
# Per operation, principal and mode; the whole file stays well under two minutes on 2 cores.
MAX_EXAMPLES = 40
MIN_OPERATIONS = 14  # what /openapi.json documents today; fewer means the schema lost operations


def _aim(case: schemathesis.Case, account_id: str) -> None:
    """Point a generated `account_id` at a real account half of the time (deterministic per case)."""
    params = case.path_parameters
    if params and "account_id" in params and random.Random(repr(params)).random() < 0.5:
        params["account_id"] = account_id


@dataclass
class FuzzRun:
    operations: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    unsatisfiable: list[str] = field(default_factory=list)


def _fuzz(base_url: str, token: str, account_id: str, mode: schemathesis.GenerationMode) -> FuzzRun:
    api = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    headers = {"Authorization": f"Bearer {token}"}
    out = FuzzRun()
    for result in api.get_all_operations():
        operation = result.ok()
        out.operations += 1

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case: schemathesis.Case) -> None:
            _aim(case, account_id)
            response = case.call_and_validate(headers=headers, checks=CHECKS, timeout=15)
            out.statuses[response.status_code] += 1

        try:
            run()
        except Unsatisfiable:
            if mode is not schemathesis.GenerationMode.NEGATIVE:
                raise
            # /healthz, /readyz, /metrics: no parameters, no body, no credentials: nothing to make invalid.
            out.unsatisfiable.append(operation.label)
        except (Exception, BaseExceptionGroup) as exc:  # every operation's findings, not only the first
            out.failures.append(f"{operation.label}: {exc}")
    print(f"\n{mode.value}: {out.operations} operations, {sum(out.statuses.values())} calls, "
          f"statuses {dict(sorted(out.statuses.items()))}")
    return out


def _assert_clean(run: FuzzRun) -> None:
    assert run.operations >= MIN_OPERATIONS
    assert sum(run.statuses.values()) >= run.operations * 3, "the fuzzer barely called the API"
    assert not run.failures, "\n\n".join(run.failures)
    assert set(run.unsatisfiable) <= {"GET /healthz", "GET /readyz", "GET /metrics"}, run.unsatisfiable


@pytest.mark.parametrize("mode", [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE],
                         ids=["positive", "negative"])
def test_api_as_admin(fuzz_meterd: Meterd, fuzz_accounts: FuzzAccounts, mode: schemathesis.GenerationMode) -> None:
    assert fuzz_meterd.proc.http
    _assert_clean(_fuzz(fuzz_meterd.proc.http, fuzz_meterd.admin_token, fuzz_accounts.admin_target, mode))


@pytest.mark.parametrize("mode", [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE],
                         ids=["positive", "negative"])
def test_api_as_account_key(fuzz_meterd: Meterd, fuzz_accounts: FuzzAccounts,
                            mode: schemathesis.GenerationMode) -> None:
    assert fuzz_meterd.proc.http
    _assert_clean(_fuzz(fuzz_meterd.proc.http, fuzz_accounts.own_key, fuzz_accounts.own, mode))


def test_the_checks_can_fail(fuzz_meterd: Meterd) -> None:
    """The same checks reject an undocumented status and a body that breaks its schema."""
    assert fuzz_meterd.proc.http
    api = schemathesis.openapi.from_url(f"{fuzz_meterd.proc.http}/openapi.json")
    case = api["/v1/accounts/{account_id}"]["GET"].Case(path_parameters={"account_id": "acc_missing"})
    real = fuzz_meterd.admin.get("/v1/accounts/acc_missing")
    assert real.status_code == 404
    case.validate_response(real, checks=CHECKS)
    for status, body, failure in ((418, {"type": "x", "title": "teapot", "status": 418}, "UndefinedStatusCode"),
                                  (200, {"id": 42}, "JsonSchemaError")):
        fake = httpx.Response(status, json=body, request=real.request)
        fake.elapsed = real.elapsed
        with pytest.raises(BaseExceptionGroup) as info:  # schemathesis FailureGroup
            case.validate_response(fake, checks=CHECKS)
        assert failure in [type(e).__name__ for e in info.value.exceptions], info.value
