"""Hypothesis against the gRPC writer: generated WriteRequests and raw malformed bytes.

Generated requests (random and boundary strings and integers, batches over the size limit, other
accounts' records) may only be answered OK, INVALID_ARGUMENT (with field violations),
PERMISSION_DENIED, ALREADY_EXISTS or RESOURCE_EXHAUSTED — never INTERNAL or UNKNOWN. Raw bytes
that are not a WriteRequest must get a clean error, and the writer must keep serving afterwards.
"""

from __future__ import annotations

import time

import grpc
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.pb.meterd.v1 import traffic_pb2
from tests.fuzz.conftest import MAX_BATCH_RECORDS, FuzzAccounts
from tests.support.meterd_client import Meterd, bearer, grpc_violations, record, unique

ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED,
           grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.RESOURCE_EXHAUSTED}
WRITE = "/meterd.v1.TrafficWriter/Write"
INT64 = [-(2**63), -(2**31), -1, 0, 1, 2**31, 2**53, 2**63 - 1]
UINT64 = [0, 1, 2**31, 2**32, 2**44, 2**44 + 1, 2**53, 2**63 - 1, 2**63, 2**64 - 1]
ODD_STRINGS = ["", " ", "\x00", "a" * 128, "a" * 129, "a" * 5000, "é", "😀", "../../etc/passwd", "' OR 1=1 --",
               "acc_", "\u202e", "\ufeff", "a\nb"]
FUZZ = settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))


def _strings() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(ODD_STRINGS), st.text(max_size=200), st.from_regex(r"[A-Za-z0-9._:-]{1,130}",
                                                                                       fullmatch=True))


def _records(accounts: FuzzAccounts) -> st.SearchStrategy[traffic_pb2.TrafficRecord]:
    now = int(time.time() * 1000)
    day = 24 * 3600 * 1000
    return st.builds(
        traffic_pb2.TrafficRecord,
        account_id=st.one_of(st.just(accounts.own), st.just(accounts.other), _strings()),
        node_id=_strings(),
        timestamp_ms=st.one_of(st.just(now), st.integers(now - 8 * day, now + day), st.sampled_from(INT64),
                               st.integers(-(2**63), 2**63 - 1)),
        bytes_in=st.one_of(st.sampled_from(UINT64), st.integers(0, 2**64 - 1)),
        bytes_out=st.one_of(st.sampled_from(UINT64), st.integers(0, 2**64 - 1)),
        requests=st.one_of(st.sampled_from(UINT64), st.integers(0, 2**64 - 1)),
    )


def _valid_records(accounts: FuzzAccounts) -> st.SearchStrategy[traffic_pb2.TrafficRecord]:
    """Records inside every limit (own account, recent timestamp, moderate counts)."""
    now = int(time.time() * 1000)
    return st.builds(
        traffic_pb2.TrafficRecord, account_id=st.just(accounts.own),
        node_id=st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}", fullmatch=True),
        timestamp_ms=st.integers(now - 6 * 24 * 3600 * 1000, now + 60_000),
        bytes_in=st.integers(0, 2**40), bytes_out=st.integers(0, 2**40), requests=st.integers(0, 2**31))


def _requests(accounts: FuzzAccounts) -> st.SearchStrategy[traffic_pb2.WriteRequest]:
    batch_id = st.one_of(st.builds(lambda: unique("fz")), _strings())
    valid = st.builds(traffic_pb2.WriteRequest, batch_id=st.builds(lambda: unique("fz")),
                      records=st.lists(_valid_records(accounts), min_size=1, max_size=MAX_BATCH_RECORDS))
    # A valid batch with wild records mixed in, and a batch of wild records only.
    mixed = st.builds(traffic_pb2.WriteRequest, batch_id=batch_id,
                      records=st.lists(st.one_of(_valid_records(accounts), _records(accounts)),
                                       max_size=MAX_BATCH_RECORDS + 5))
    wild = st.builds(traffic_pb2.WriteRequest, batch_id=batch_id,
                     records=st.lists(_records(accounts), max_size=MAX_BATCH_RECORDS + 5))
    return st.one_of(valid, mixed, wild)


def _outcome(call: object) -> tuple[grpc.StatusCode, grpc.RpcError | None]:
    try:
        assert callable(call)
        call()
        return grpc.StatusCode.OK, None
    except grpc.RpcError as err:
        return err.code(), err


def _check_error(code: grpc.StatusCode, err: grpc.RpcError | None) -> None:
    assert code in ALLOWED, f"{code.name}: {err.details() if err else ''}"
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        assert err is not None and grpc_violations(err), f"INVALID_ARGUMENT without field violations: {err.details()}"


def test_generated_write_requests_get_clean_answers(fuzz_meterd: Meterd, fuzz_accounts: FuzzAccounts) -> None:
    seen: dict[str, int] = {}

    @given(req=_requests(fuzz_accounts), as_admin=st.booleans())
    @FUZZ
    def run(req: traffic_pb2.WriteRequest, as_admin: bool) -> None:
        token = fuzz_meterd.admin_token if as_admin else fuzz_accounts.own_key
        result: list[traffic_pb2.WriteResponse] = []
        code, err = _outcome(lambda: result.append(fuzz_meterd.stub.Write(req, metadata=bearer(token), timeout=15)))
        _check_error(code, err)
        if code == grpc.StatusCode.OK:  # all or nothing: every record of the batch is accepted
            assert result[0].accepted == len(req.records) and result[0].batch_id == req.batch_id
        seen[code.name] = seen.get(code.name, 0) + 1

    run()
    print(f"\ngRPC Write fuzz outcomes: {seen}")
    assert seen.get("OK") and seen.get("INVALID_ARGUMENT"), seen  # the generator reaches both sides


def test_generated_write_streams_get_clean_answers(fuzz_meterd: Meterd, fuzz_accounts: FuzzAccounts) -> None:
    @given(reqs=st.lists(_requests(fuzz_accounts), min_size=1, max_size=4))
    @settings(FUZZ, max_examples=40)
    def run(reqs: list[traffic_pb2.WriteRequest]) -> None:
        responses: list[traffic_pb2.WriteResponse] = []

        def call() -> None:
            for r in fuzz_meterd.stub.WriteStream(iter(reqs), metadata=bearer(fuzz_accounts.own_key), timeout=15):
                responses.append(r)

        code, err = _outcome(call)
        _check_error(code, err)
        # One response per request, in order, until the first refused request ends the stream.
        assert [r.batch_id for r in responses] == [r.batch_id for r in reqs[:len(responses)]]
        if code == grpc.StatusCode.OK:
            assert len(responses) == len(reqs)

    run()


# -- raw bytes -------------------------------------------------------------------------------------
CRAFTED = [
    b"\xff\xff\xff",  # an invalid tag
    b"\x0a\x05ab",  # a string field whose length runs past the end
    b"\x0a\xff\xff\xff\xff\x0f",  # a 4 GiB length prefix
    b"\x0a\x02\xc3\x28",  # batch_id with invalid UTF-8
    b"\x12\x03\x0a\x01",  # a record cut short
    b"\x12\x06\x18\xff\xff\xff\xff\xff",  # a varint that never ends inside a record
    b"\x0b\x0c",  # group start/end wire types
    b"\x12" + b"\x80" * 11,  # an over-long varint length
    b"",  # an empty message: decodes, then fails validation
]


def _raw_write(channel: grpc.Channel, raw: bytes, token: str) -> tuple[grpc.StatusCode, str]:
    call = channel.unary_unary(WRITE, request_serializer=None, response_deserializer=None)
    try:
        call(raw, metadata=bearer(token), timeout=10)
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as err:
        return err.code(), err.details() or ""


def _decodes(raw: bytes) -> bool:
    try:
        traffic_pb2.WriteRequest.FromString(raw)
        return True
    except DecodeError:
        return False


def _assert_serving(fuzz_meterd: Meterd, fuzz_accounts: FuzzAccounts) -> None:
    resp = fuzz_meterd.write(fuzz_accounts.own_key, unique("alive"), [record(fuzz_accounts.own)])
    assert resp.accepted == 1
    assert fuzz_meterd.proc.proc is not None and fuzz_meterd.proc.proc.poll() is None


def test_raw_malformed_bytes_get_a_clean_error_and_the_writer_keeps_serving(
        fuzz_meterd: Meterd, fuzz_accounts: FuzzAccounts) -> None:
    outcomes: dict[str, int] = {}

    def check(raw: bytes) -> None:
        code, details = _raw_write(fuzz_meterd.channel, raw, fuzz_accounts.own_key)
        if _decodes(raw):  # protobuf skips unknown fields: many random byte strings are valid messages
            assert code in ALLOWED, (raw, code, details)
        else:
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (raw, code, details)
            assert "not a valid meterd.v1.WriteRequest" in details and "<class" not in details, details
        outcomes[code.name] = outcomes.get(code.name, 0) + 1

    for raw in CRAFTED:
        check(raw)

    @given(raw=st.binary(max_size=300))
    @settings(FUZZ, max_examples=200)
    def run(raw: bytes) -> None:
        check(raw)

    run()
    print(f"\nraw-bytes outcomes: {outcomes}")
    _assert_serving(fuzz_meterd, fuzz_accounts)


# grpc.aio answers a request its deserializer cannot parse with UNKNOWN "Unexpected <class
# 'google.protobuf.message.DecodeError'>" and logs an ERROR traceback; service.grpc_writer parses
# with a deserializer that never raises, so the handler can answer INVALID_ARGUMENT.
def test_undecodable_request_is_invalid_argument(fuzz_meterd: Meterd, fuzz_accounts: FuzzAccounts) -> None:
    logged_before = len(fuzz_meterd.proc.output())
    for raw in CRAFTED[:-1]:
        code, details = _raw_write(fuzz_meterd.channel, raw, fuzz_accounts.own_key)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (raw, code, details)
        assert "<class" not in details and "Traceback" not in details, details
    _assert_serving(fuzz_meterd, fuzz_accounts)
    # A client's bad bytes are the client's problem: no ERROR traceback per request in the server log.
    assert "Traceback" not in fuzz_meterd.proc.output()[logged_before:]
