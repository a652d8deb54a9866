//! Identity over gRPC: resolve, merge, explain, split, bad input, and the merge feed for the profile store.

use futures::StreamExt;
use prost::Message;
use rapport_proto::common::v1::{Identifier, IdentifierType, Provenance, SubscribeRequest};
use rapport_proto::identity::v1::{self as pb, identity_service_client::IdentityServiceClient};
use rapport_testkit::TestSuite;
use tonic::Code;

fn id(t: IdentifierType, value: &str) -> Identifier {
    Identifier { r#type: t as i32, value: value.into(), namespace: String::new() }
}

fn resolve_request(ids: Vec<Identifier>) -> pb::ResolveRequest {
    pb::ResolveRequest {
        identifiers: ids,
        provenance: Some(Provenance {
            source: "webshop".into(),
            source_record_id: "evt-1".into(),
            actor: String::new(),
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn resolve_merge_explain_and_split_over_grpc() {
    let suite = TestSuite::start_with(rapport_testkit::SuiteOptions::services(&["identity"])).await;
    let mut client = IdentityServiceClient::new(suite.channel().await);
    let web = client
        .resolve(suite.admin(resolve_request(vec![
            id(IdentifierType::AnonymousId, "ck-1"),
            id(IdentifierType::Email, " Eva@Example.COM"),
        ])))
        .await
        .unwrap()
        .into_inner();
    assert!(web.created);
    let store = client
        .resolve(
            suite
                .admin(resolve_request(vec![id(IdentifierType::LoyaltyId, "L-9"), id(IdentifierType::UserId, "null")])),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(store.ignored, vec![1], "the placeholder user id is ignored");
    let joined = client
        .resolve(suite.admin(resolve_request(vec![
            id(IdentifierType::Email, "eva@example.com"),
            id(IdentifierType::LoyaltyId, "L-9"),
        ])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(joined.customer_id, web.customer_id);
    assert_eq!(joined.merged_customer_ids, vec![store.customer_id.clone()]);

    // The alias still finds the survivor, and Explain shows the evidence.
    let explained = client
        .explain(suite.admin(pb::ExplainRequest { customer_id: store.customer_id.clone() }))
        .await
        .unwrap()
        .into_inner();
    let customer = explained.customer.unwrap();
    assert_eq!(customer.customer_id, web.customer_id);
    assert_eq!(customer.aliases, vec![store.customer_id.clone()]);
    let merge = explained.changes.iter().find(|c| c.kind == pb::ChangeKind::Merge as i32).unwrap();
    assert_eq!(merge.provenance.as_ref().unwrap().source, "webshop");
    assert_eq!(merge.evidence.len(), 2);

    // The merge reaches the feed as a typed event.
    let mut feed = client
        .subscribe(suite.admin(SubscribeRequest { topics: vec!["identity.merged".into()], ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    let record = feed.next().await.unwrap().unwrap();
    let any = record.payload.unwrap();
    assert_eq!(any.type_url, "type.googleapis.com/rapport.identity.v1.CustomersMerged");
    let event = pb::CustomersMerged::decode(any.value.as_slice()).unwrap();
    assert_eq!(
        (event.survivor_customer_id.as_str(), event.merged_customer_id.as_str()),
        (web.customer_id.as_str(), store.customer_id.as_str())
    );

    // Undo it exactly.
    let split = client
        .split(suite.admin(pb::SplitRequest {
            customer_id: web.customer_id.clone(),
            merge_id: merge.change_id.clone(),
            identifiers: vec![],
            provenance: Some(Provenance {
                source: "support".into(),
                source_record_id: "ticket-1".into(),
                actor: "agent-7".into(),
            }),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(split.split_customer_id, store.customer_id);
    let found = client
        .lookup(suite.admin(pb::LookupRequest { identifier: Some(id(IdentifierType::LoyaltyId, "L-9")) }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.customer_id, store.customer_id);
    suite.stop().await;
}

#[tokio::test]
async fn bad_identifiers_are_named_and_nothing_is_written() {
    let suite = TestSuite::start_with(rapport_testkit::SuiteOptions::services(&["identity"])).await;
    let mut client = IdentityServiceClient::new(suite.channel().await);
    let err = client
        .resolve(suite.admin(resolve_request(vec![
            id(IdentifierType::Email, "ok@example.com"),
            id(IdentifierType::Email, "not-an-email"),
        ])))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("identifiers[1].value"), "{}", err.message());
    // The valid identifier of the refused call was not stored.
    let err = client
        .lookup(suite.admin(pb::LookupRequest { identifier: Some(id(IdentifierType::Email, "ok@example.com")) }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let err = client
        .resolve(suite.admin(resolve_request(vec![Identifier {
            r#type: 0,
            value: "x".into(),
            namespace: String::new(),
        }])))
        .await
        .unwrap_err();
    assert!(err.message().starts_with("identifiers[0].type"), "{}", err.message());
    let err = client
        .resolve(suite.admin(resolve_request(vec![Identifier {
            r#type: IdentifierType::External as i32,
            value: "1".into(),
            namespace: String::new(),
        }])))
        .await
        .unwrap_err();
    assert!(err.message().starts_with("identifiers[0].value"), "{}", err.message());
    let err = client.resolve(suite.admin(resolve_request(vec![]))).await.unwrap_err();
    assert!(err.message().starts_with("identifiers:"), "{}", err.message());
    let err = client.explain(suite.admin(pb::ExplainRequest { customer_id: "cus_nope".into() })).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .split(suite.admin(pb::SplitRequest { customer_id: "cus_x".into(), provenance: None, ..Default::default() }))
        .await
        .unwrap_err();
    assert!(err.message().starts_with("provenance.source"), "{}", err.message());
    suite.stop().await;
}

#[tokio::test]
async fn export_and_erase_are_audited_and_erasure_leaves_a_tombstone() {
    use rapport_proto::common::v1::{CustomerRef, EraseCustomerRequest, ExportCustomerRequest, customer_ref::Ref};
    let options = rapport_testkit::SuiteOptions::services(&["identity"]);
    let suite = TestSuite::start_with(options.clone()).await;
    let mut client = IdentityServiceClient::new(suite.channel().await);
    let ann = client
        .resolve(suite.admin(resolve_request(vec![id(IdentifierType::Email, "ann@example.com")])))
        .await
        .unwrap()
        .into_inner();
    let by_email = CustomerRef { r#ref: Some(Ref::Identifier(id(IdentifierType::Email, "ANN@example.com"))) };
    let export = client
        .export_customer(suite.admin(ExportCustomerRequest { customer: Some(by_email.clone()) }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(export.customer_id, ann.customer_id);
    assert!(export.data.unwrap().fields.contains_key("identifiers"));

    let err = client
        .erase_customer(suite.admin(EraseCustomerRequest { customer: Some(by_email.clone()), reason: " ".into() }))
        .await
        .unwrap_err();
    assert!(err.message().starts_with("reason"), "{}", err.message());
    let erased = client
        .erase_customer(suite.admin(EraseCustomerRequest { customer: Some(by_email), reason: "ticket DSR-1".into() }))
        .await
        .unwrap()
        .into_inner();
    assert!(erased.records_erased >= 1);
    let customer = client
        .get_customer(
            suite.admin(pb::GetCustomerRequest { customer_id: ann.customer_id.clone(), ..Default::default() }),
        )
        .await
        .unwrap()
        .into_inner();
    assert!(customer.erased && customer.identifiers.is_empty());

    let settings = TestSuite::settings(&suite.storage, &options).unwrap();
    let db = rapport::services::open_db(&settings, "identity").await.unwrap();
    let audit = rapport_storage::Audit::list(&db, &ann.customer_id, 10).await.unwrap();
    let actions: Vec<_> = audit.iter().map(|a| (a.principal.as_str(), a.action.as_str())).collect();
    assert_eq!(actions, vec![("admin", "customer.export"), ("admin", "customer.erase")]);
    db.close().await;
    suite.stop().await;
}

fn external(ns: &str, value: &str) -> Identifier {
    Identifier { r#type: IdentifierType::External as i32, value: value.into(), namespace: ns.into() }
}

async fn entity(
    client: &mut IdentityServiceClient<tonic::transport::Channel>,
    suite: &TestSuite,
    kind: pb::EntityKind,
    value: &str,
) -> String {
    let mut request = resolve_request(vec![external("crm", value)]);
    request.kind = kind as i32;
    client.resolve(suite.admin(request)).await.unwrap().into_inner().customer_id
}

#[tokio::test]
async fn hierarchy_account_site_contact_with_moves_cycles_and_kind_pairs_refused() {
    let suite = TestSuite::start_with(rapport_testkit::SuiteOptions::services(&["identity"])).await;
    let mut client = IdentityServiceClient::new(suite.channel().await);
    use pb::EntityKind as K;
    let account = entity(&mut client, &suite, K::Account, "acme").await;
    let parent_account = entity(&mut client, &suite, K::Account, "acme-holding").await;
    let site = entity(&mut client, &suite, K::Site, "acme-berlin").await;
    let other_site = entity(&mut client, &suite, K::Site, "acme-munich").await;
    let contact = entity(&mut client, &suite, K::Contact, "c-1").await;
    let person = entity(&mut client, &suite, K::Person, "p-1").await;
    let link = |parent: &str, child: &str, role: &str| {
        suite.admin(pb::LinkEntitiesRequest {
            parent_customer_id: parent.into(),
            child_customer_id: child.into(),
            provenance: Some(Provenance { source: "crm".into(), source_record_id: "r-1".into(), actor: "ops".into() }),
            role: role.into(),
        })
    };
    client.link_entities(link(&parent_account, &account, "subsidiary")).await.unwrap();
    client.link_entities(link(&account, &site, "branch")).await.unwrap();
    let placed = client.link_entities(link(&site, &contact, "decision maker")).await.unwrap().into_inner();
    let child = placed.child.unwrap();
    assert_eq!((child.parent_customer_id.as_str(), child.role.as_str()), (site.as_str(), "decision maker"));
    assert_eq!(child.display_name, "crm:c-1", "the display name comes from what the graph holds");
    assert!(placed.previous_parent_customer_id.is_empty());

    // The contact sees its account and site above it; the account sees site and contact below.
    let h = client
        .get_hierarchy(suite.admin(pb::GetHierarchyRequest { customer_id: contact.clone(), ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    let up: Vec<_> = h.ancestors.iter().map(|n| n.customer_id.as_str()).collect();
    assert_eq!(up, vec![parent_account.as_str(), account.as_str(), site.as_str()]);
    assert_eq!(h.ancestors[1].role, "subsidiary");
    assert_eq!(h.entity.as_ref().unwrap().role, "decision maker");
    let h = client
        .get_hierarchy(suite.admin(pb::GetHierarchyRequest {
            customer_id: account.clone(),
            depth: 2,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let down: Vec<_> = h.children.iter().map(|n| (n.customer_id.as_str(), n.parent_customer_id.as_str())).collect();
    assert_eq!(down, vec![(site.as_str(), account.as_str()), (contact.as_str(), site.as_str())]);
    assert_eq!(h.entity.unwrap().child_count, 1);
    // Paging: one child per page.
    let first = client
        .get_hierarchy(suite.admin(pb::GetHierarchyRequest {
            customer_id: account.clone(),
            depth: 2,
            page: Some(rapport_proto::common::v1::PageRequest { page_size: 1, page_token: String::new() }),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.children.len(), 1);
    let token = first.page.unwrap().next_page_token;
    let second = client
        .get_hierarchy(suite.admin(pb::GetHierarchyRequest {
            customer_id: account.clone(),
            depth: 2,
            page: Some(rapport_proto::common::v1::PageRequest { page_size: 1, page_token: token }),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.children[0].customer_id, contact);
    assert!(second.page.unwrap().next_page_token.is_empty());

    // A cycle and a wrong pair of kinds are refused by field, and nothing is stored.
    let err = client.link_entities(link(&account, &parent_account, "")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("parent_customer_id: linking would make a cycle"), "{}", err.message());
    let err = client.link_entities(link(&contact, &site, "")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("child_customer_id: a site cannot be linked under a contact"),
        "{}",
        err.message()
    );
    let err = client.link_entities(link(&account, &person, "")).await.unwrap_err();
    assert!(err.message().starts_with("child_customer_id"), "{}", err.message());
    let err = client.link_entities(link(&site, &contact, &"x".repeat(129))).await.unwrap_err();
    assert!(err.message().starts_with("role"), "{}", err.message());
    let err = client
        .get_hierarchy(suite.admin(pb::GetHierarchyRequest {
            customer_id: site.clone(),
            depth: 4,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert!(err.message().starts_with("depth"), "{}", err.message());
    let h = client
        .get_hierarchy(
            suite.admin(pb::GetHierarchyRequest { customer_id: parent_account.clone(), ..Default::default() }),
        )
        .await
        .unwrap()
        .into_inner();
    assert!(h.ancestors.is_empty(), "the refused cycle was not stored");

    // Linking to another site moves the contact; unlinking detaches it.
    let moved = client.link_entities(link(&other_site, &contact, "buyer")).await.unwrap().into_inner();
    assert_eq!(moved.previous_parent_customer_id, site);
    let customer = client
        .get_customer(suite.admin(pb::GetCustomerRequest { customer_id: contact.clone(), ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    let parents: Vec<_> = customer.parents.iter().map(|p| p.customer_id.as_str()).collect();
    assert_eq!(parents, vec![other_site.as_str()]);
    let err = client
        .unlink_entities(suite.admin(pb::UnlinkEntitiesRequest {
            child_customer_id: contact.clone(),
            parent_customer_id: site.clone(),
            provenance: None,
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    client
        .unlink_entities(suite.admin(pb::UnlinkEntitiesRequest {
            child_customer_id: contact.clone(),
            parent_customer_id: other_site.clone(),
            provenance: None,
        }))
        .await
        .unwrap();
    let h = client
        .get_hierarchy(suite.admin(pb::GetHierarchyRequest { customer_id: contact.clone(), ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    assert!(h.ancestors.is_empty());

    // Every change reached the feed.
    let mut feed = client
        .subscribe(
            suite.admin(SubscribeRequest { topics: vec!["identity.hierarchy_changed".into()], ..Default::default() }),
        )
        .await
        .unwrap()
        .into_inner();
    let mut events = Vec::new();
    for _ in 0..5 {
        let record = feed.next().await.unwrap().unwrap();
        events.push(pb::HierarchyChanged::decode(record.payload.unwrap().value.as_slice()).unwrap());
    }
    assert_eq!(events[3].previous_parent_customer_id, site);
    assert!(events[4].parent_customer_id.is_empty() && events[4].previous_parent_customer_id == other_site);
    suite.stop().await;
}
