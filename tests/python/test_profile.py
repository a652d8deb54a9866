"""ProfileService through grpcio: track and identify, read by any identifier, timeline, audit, errors."""

import time

import grpc
from google.protobuf import field_mask_pb2, struct_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from conftest import unique_email, unique_phone
from rapport.common.v1 import types_pb2 as common
from rapport.profile.v1 import profile_pb2 as pb
from rapport.profile.v1 import profile_pb2_grpc as rpc


def email(value):
    return common.Identifier(type=common.IDENTIFIER_TYPE_EMAIL, value=value)


def props(**kv):
    s = struct_pb2.Struct()
    s.update(kv)
    return s


def now():
    t = Timestamp()
    t.GetCurrentTime()
    return t


def event(message_id, name, who, **properties):
    return pb.Event(message_id=message_id, name=name, occurred_at=now(), properties=props(**properties),
                    context=pb.EventContext(source="webshop", channel=common.CHANNEL_WEB), identifiers=[who])


def test_track_identify_and_read_by_any_identifier(suite):
    stub = rpc.ProfileServiceStub(suite.channel_for("profile"))
    address, phone = unique_email("profile"), unique_phone()
    order = dict(revenue_minor=4999, currency="EUR",
                 items=[dict(sku="s1", quantity=1, price_minor=4999, category="shoes")])
    tracked = stub.Track(pb.TrackRequest(events=[
        event(f"{address}-1", "product_viewed", email(address), category="shoes"),
        event(f"{address}-2", "order_completed", email(address), **order),
    ]), metadata=suite.md())
    assert not tracked.rejected
    customer = tracked.results[0].customer_id
    assert all(r.stored and r.customer_id == customer for r in tracked.results)

    # A replay is stored once.
    replay = stub.Track(pb.TrackRequest(events=[event(f"{address}-2", "order_completed", email(address), **order)]),
                        metadata=suite.md())
    assert not replay.results[0].stored

    identified = stub.Identify(pb.IdentifyRequest(
        identifiers=[email(address), common.Identifier(type=common.IDENTIFIER_TYPE_PHONE, value=phone)],
        traits=props(first_name="Kim", city="Lyon"), source="crm"), metadata=suite.md())
    assert identified.customer_id == customer

    by_phone = stub.GetProfile(pb.GetProfileRequest(
        customer=common.CustomerRef(identifier=common.Identifier(type=common.IDENTIFIER_TYPE_PHONE, value=phone)),
        purpose="py-test"), metadata=suite.md())
    assert by_phone.customer_id == customer
    assert by_phone.traits["city"] == "Lyon"
    assert by_phone.computed.order_count == 1
    assert by_phone.computed.total_revenue.minor_units == 4999
    assert "shoes" in by_phone.computed.interests

    masked = stub.GetProfile(pb.GetProfileRequest(customer=common.CustomerRef(customer_id=customer),
                                                  field_mask=field_mask_pb2.FieldMask(paths=["computed"])),
                             metadata=suite.md())
    assert masked.computed.order_count == 1
    assert not masked.traits.fields, "the field mask leaves traits out"

    timeline = stub.GetTimeline(pb.GetTimelineRequest(customer=common.CustomerRef(customer_id=customer),
                                                      names=["order_completed"]), metadata=suite.md())
    assert [e.name for e in timeline.events] == ["order_completed"]

    # Every read is audited, with the purpose given.
    for _ in range(50):
        audit = stub.ListAudit(pb.ListAuditRequest(customer=common.CustomerRef(customer_id=customer)),
                               metadata=suite.md())
        if any("py-test" in e.detail for e in audit.entries):
            break
        time.sleep(0.1)
    assert any("py-test" in e.detail for e in audit.entries), list(audit.entries)


def test_a_batch_stores_the_good_events_and_names_the_bad(suite):
    stub = rpc.ProfileServiceStub(suite.channel_for("profile"))
    address = unique_email("batch")
    future = Timestamp(seconds=int(time.time()) + 10 * 365 * 86400)
    bad_time = event(f"{address}-future", "page_viewed", email(address))
    bad_time.occurred_at.CopyFrom(future)
    no_identifier = pb.Event(message_id=f"{address}-anon", name="page_viewed", occurred_at=now())
    wrong_type = event(f"{address}-order", "order_completed", email(address), revenue_minor="a lot", currency="EUR")
    good = event(f"{address}-ok", "page_viewed", email(address), path="/")
    response = stub.Track(pb.TrackRequest(events=[bad_time, no_identifier, good, wrong_type]), metadata=suite.md())
    rejected = {r.index: r.reason for r in response.rejected}
    assert set(rejected) == {0, 1, 3}, rejected
    assert "occurred_at" in rejected[0]
    assert "identifiers" in rejected[1]
    assert "revenue_minor" in rejected[3]
    assert [r.index for r in response.results if r.stored] == [2]


def test_get_profile_of_nobody_is_not_found(suite):
    stub = rpc.ProfileServiceStub(suite.channel_for("profile"))
    try:
        stub.GetProfile(pb.GetProfileRequest(customer=common.CustomerRef(identifier=email(unique_email("nobody")))),
                        metadata=suite.md())
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.NOT_FOUND
    else:
        raise AssertionError("a profile nobody tracked was found")
