"""ConsentService through grpcio: record, check with the reason and entry, withdrawal, history, errors."""

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from conftest import unique_email
from rapport.common.v1 import types_pb2 as common
from rapport.consent.v1 import consent_pb2 as pb
from rapport.consent.v1 import consent_pb2_grpc as rpc
from rapport.consent.v1 import ledger_pb2 as ledger


def email(value):
    return common.Identifier(type=common.IDENTIFIER_TYPE_EMAIL, value=value)


def at(seconds):
    return Timestamp(seconds=seconds)


def entry(address, status, when, purpose="marketing", channel=common.CHANNEL_EMAIL):
    return ledger.EntryInput(
        contact_point=email(address), channel=channel, purpose=common.Purpose(name=purpose), status=status,
        legal_basis=ledger.LEGAL_BASIS_CONSENT, provenance=common.Provenance(source="webshop", actor="py"),
        proof=ledger.Proof(notice_id="privacy", notice_version="3", method=ledger.PROOF_METHOD_WEB_FORM,
                           ip_address="192.0.2.1", user_agent="pytest"),
        occurred_at=at(when),
    )


def check(stub, suite, address, region="DE"):
    return stub.Check(
        pb.CheckRequest(contact_point=email(address), channel=common.CHANNEL_EMAIL,
                        purpose=common.Purpose(name="marketing"), region=region),
        metadata=suite.md(),
    )


def test_grant_then_withdraw(suite):
    stub = rpc.ConsentServiceStub(suite.channel_for("consent"))
    address = unique_email("consent")
    nothing = check(stub, suite, address)
    assert not nothing.allowed, "marketing with nothing recorded is denied in an opt-in region"
    assert nothing.reason == pb.CHECK_REASON_NO_RECORD_OPT_IN_REGION

    recorded = stub.Record(pb.RecordRequest(entries=[entry(address, ledger.CONSENT_STATUS_GRANTED, 1_764_000_000)]),
                           metadata=suite.md())
    assert list(recorded.in_force) == [True]
    granted = check(stub, suite, address)
    assert granted.allowed and granted.reason == pb.CHECK_REASON_GRANTED
    assert granted.entry.entry_id == recorded.entries[0].entry_id

    stub.Record(pb.RecordRequest(entries=[entry(address, ledger.CONSENT_STATUS_WITHDRAWN, 1_764_000_100)]),
                metadata=suite.md())
    withdrawn = check(stub, suite, address)
    assert not withdrawn.allowed and withdrawn.reason == pb.CHECK_REASON_WITHDRAWN

    # A late-arriving older grant does not override the newer withdrawal.
    late = stub.Record(pb.RecordRequest(entries=[entry(address, ledger.CONSENT_STATUS_GRANTED, 1_763_000_000)]),
                       metadata=suite.md())
    assert list(late.in_force) == [False]
    assert not check(stub, suite, address).allowed

    history = stub.History(pb.HistoryRequest(contact_point=email(address)), metadata=suite.md())
    assert len(history.entries) == 3


@pytest.mark.parametrize(
    "bad, field",
    [
        (dict(channel=common.CHANNEL_UNSPECIFIED), "channel"),
        (dict(purpose="astrology"), "purpose"),
    ],
)
def test_unknown_channel_or_purpose_is_named(suite, bad, field):
    stub = rpc.ConsentServiceStub(suite.channel_for("consent"))
    address = unique_email("bad")
    e = entry(address, ledger.CONSENT_STATUS_GRANTED, 1_764_000_000, **bad)
    with pytest.raises(grpc.RpcError) as err:
        stub.Record(pb.RecordRequest(entries=[e]), metadata=suite.md())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.value.details()
    # Nothing was recorded.
    history = stub.History(pb.HistoryRequest(contact_point=email(address)), metadata=suite.md())
    assert len(history.entries) == 0
