"""IdentityService through grpcio: resolve, merge with evidence, explain, split, and the error cases."""

import grpc
import pytest

from conftest import READ_ONLY_TOKEN, unique_email, unique_phone
from rapport.common.v1 import types_pb2 as common
from rapport.identity.v1 import identity_pb2 as pb
from rapport.identity.v1 import identity_pb2_grpc as rpc


def ident(kind, value, namespace=""):
    return common.Identifier(type=kind, value=value, namespace=namespace)


def resolve(stub, suite, *identifiers, source="py-client"):
    return stub.Resolve(
        pb.ResolveRequest(identifiers=list(identifiers), provenance=common.Provenance(source=source)),
        metadata=suite.md(),
    )


def test_resolve_is_stable_and_normalises(suite):
    stub = rpc.IdentityServiceStub(suite.channel_for("identity"))
    email = unique_email()
    first = resolve(stub, suite, ident(common.IDENTIFIER_TYPE_EMAIL, email))
    assert first.created
    assert first.customer_id.startswith("cus_")
    # Case and surrounding blanks do not make another customer.
    again = resolve(stub, suite, ident(common.IDENTIFIER_TYPE_EMAIL, "  " + email.upper() + " "))
    assert again.customer_id == first.customer_id
    assert not again.created
    found = stub.Lookup(pb.LookupRequest(identifier=ident(common.IDENTIFIER_TYPE_EMAIL, email)), metadata=suite.md())
    assert found.customer_id == first.customer_id


def test_merge_keeps_evidence_and_split_undoes_it(suite):
    stub = rpc.IdentityServiceStub(suite.channel_for("identity"))
    email, phone = unique_email(), unique_phone()
    a = resolve(stub, suite, ident(common.IDENTIFIER_TYPE_EMAIL, email)).customer_id
    b = resolve(stub, suite, ident(common.IDENTIFIER_TYPE_PHONE, phone)).customer_id
    assert a != b
    merged = resolve(
        stub, suite, ident(common.IDENTIFIER_TYPE_EMAIL, email), ident(common.IDENTIFIER_TYPE_PHONE, phone),
        source="crm",
    )
    assert merged.merged_customer_ids, "two customers seen together must merge"
    survivor = merged.customer_id
    assert survivor in (a, b)
    gone = b if survivor == a else a
    # The merged-away id stays an alias of the survivor.
    customer = stub.GetCustomer(pb.GetCustomerRequest(customer_id=gone), metadata=suite.md())
    assert customer.customer_id == survivor
    explained = stub.Explain(pb.ExplainRequest(customer_id=survivor), metadata=suite.md())
    merges = [c for c in explained.changes if c.other_customer_id == gone]
    assert merges, "the merge is explained"
    assert merges[0].provenance.source == "crm"
    assert {e.type for e in merges[0].evidence} >= {common.IDENTIFIER_TYPE_EMAIL, common.IDENTIFIER_TYPE_PHONE}
    split = stub.Split(
        pb.SplitRequest(customer_id=survivor, merge_id=merged.merge_ids[0],
                        provenance=common.Provenance(source="py-client", actor="agent-7")),
        metadata=suite.md(),
    )
    assert split.split_customer_id and split.split_customer_id != survivor
    left = stub.Lookup(pb.LookupRequest(identifier=ident(common.IDENTIFIER_TYPE_EMAIL, email)), metadata=suite.md())
    right = stub.Lookup(pb.LookupRequest(identifier=ident(common.IDENTIFIER_TYPE_PHONE, phone)), metadata=suite.md())
    assert left.customer_id != right.customer_id, "the split separated the two again"


@pytest.mark.parametrize(
    "identifier, field",
    [
        (ident(common.IDENTIFIER_TYPE_EMAIL, "not-an-email"), "identifiers[0].value"),
        (ident(common.IDENTIFIER_TYPE_PHONE, "12"), "identifiers[0].value"),
        (ident(common.IDENTIFIER_TYPE_UNSPECIFIED, "x"), "identifiers[0].type"),
    ],
)
def test_malformed_identifiers_are_named(suite, identifier, field):
    stub = rpc.IdentityServiceStub(suite.channel_for("identity"))
    with pytest.raises(grpc.RpcError) as err:
        resolve(stub, suite, identifier)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.value.details()


def test_no_token_and_wrong_scope(suite):
    stub = rpc.IdentityServiceStub(suite.channel_for("identity"))
    request = pb.ResolveRequest(identifiers=[ident(common.IDENTIFIER_TYPE_EMAIL, unique_email())])
    with pytest.raises(grpc.RpcError) as err:
        stub.Resolve(request)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as err:
        stub.Resolve(request, metadata=suite.md(READ_ONLY_TOKEN))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
