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

    // Each entity's creation reached the feed with its kind.
    let mut feed = client
        .subscribe(suite.admin(SubscribeRequest { topics: vec!["identity.created".into()], ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    let mut kinds = std::collections::HashMap::new();
    while kinds.len() < 3 {
        let record =
            tokio::time::timeout(std::time::Duration::from_secs(10), feed.next()).await.unwrap().unwrap().unwrap();
        let event = pb::CustomerCreated::decode(record.payload.unwrap().value.as_slice()).unwrap();
        if [&account, &site, &contact].contains(&&event.customer_id) {
            kinds.insert(event.customer_id, event.kind);
        }
    }
    assert_eq!(kinds[&account], pb::EntityKind::Account as i32);
    assert_eq!(kinds[&site], pb::EntityKind::Site as i32);
    assert_eq!(kinds[&contact], pb::EntityKind::Contact as i32);
    suite.stop().await;
}

fn record(source: &str, id: &str, kind: pb::EntityKind, pairs: &[(&str, &str)]) -> pb::SourceRecord {
    pb::SourceRecord {
        source: source.into(),
        record_id: id.into(),
        kind: kind as i32,
        attributes: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..Default::default()
    }
}

/// A person's record with the attributes of a household (`home`) and `extra` ones.
fn at_home<'a>(home: &[(&'a str, &'a str)], source: &str, id: &str, extra: &[(&'a str, &'a str)]) -> pb::SourceRecord {
    let mut pairs = home.to_vec();
    pairs.extend_from_slice(extra);
    record(source, id, pb::EntityKind::Person, &pairs)
}

async fn finished_run(
    client: &mut IdentityServiceClient<tonic::transport::Channel>,
    suite: &TestSuite,
    request: pb::RunMatchingRequest,
) -> pb::MatchingRun {
    let started = client.run_matching(suite.admin(request)).await.unwrap().into_inner();
    assert_eq!(started.state, pb::RunState::Running as i32);
    for _ in 0..600 {
        let run = client
            .get_matching_run(suite.admin(pb::GetMatchingRunRequest { run_id: started.run_id.clone() }))
            .await
            .unwrap()
            .into_inner();
        if run.state != pb::RunState::Running as i32 {
            return run;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("run {} did not finish in 60 s", started.run_id);
}

async fn assigned(
    client: &mut IdentityServiceClient<tonic::transport::Channel>,
    suite: &TestSuite,
) -> std::collections::HashMap<(String, String), pb::RecordAssignment> {
    let mut out = std::collections::HashMap::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_record_assignments(suite.admin(pb::ListRecordAssignmentsRequest {
                page: Some(rapport_proto::common::v1::PageRequest { page_size: 1000, page_token: token }),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        for a in page.assignments {
            out.insert((a.source.clone(), a.record_id.clone()), a);
        }
        token = page.page.unwrap().next_page_token;
        if token.is_empty() {
            return out;
        }
    }
}

#[tokio::test]
async fn matching_over_grpc_feeds_the_graph_keeps_households_twins_and_kinds_apart_and_reviews_decide() {
    use pb::EntityKind as K;
    let suite = TestSuite::start_with(rapport_testkit::SuiteOptions::services(&["identity"])).await;
    let mut client = IdentityServiceClient::new(suite.channel().await);
    // A synthetic population for realistic weights, then a household with twins.
    let (background, _) = rapport_identity::matching::synth::generate(400, 8, 7);
    let mut records: Vec<pb::SourceRecord> = background.iter().map(rapport_identity::records::to_wire).collect();
    let home = [
        ("last_name", "Quennell"),
        ("street", "7 Orchard Close"),
        ("postcode", "YO1 7HH"),
        ("city", "York"),
        ("phone", "01904 123456"),
    ];
    let member = |source: &str, id: &str, extra: &[(&str, &str)]| at_home(&home, source, id, extra);
    let start = records.len();
    records.extend([
        member("crm", "t1", &[("first_name", "Harriet"), ("date_of_birth", "2001-05-09")]),
        member("crm", "t2", &[("first_name", "Imogen"), ("date_of_birth", "2001-05-09")]),
        member("shop", "t1", &[("first_name", "Hattie"), ("date_of_birth", "09/05/2001")]),
        member("shop", "t2", &[("first_name", "Imogen"), ("date_of_birth", "20010509")]),
        member("crm", "p1", &[("first_name", "Graham"), ("date_of_birth", "1968-11-30")]),
        member("crm", "p2", &[("first_name", "Fiona"), ("date_of_birth", "1970-02-14")]),
        member("web", "h", &[]),
    ]);
    // The same details as a person and as a business contact: never one customer.
    let same = [
        ("first_name", "Ottoline"),
        ("last_name", "Brackenbury"),
        ("date_of_birth", "1979-03-03"),
        ("email", "o.brackenbury@example.org"),
    ];
    records.push(record("crm", "k-person", K::Person, &same));
    records.push(record("b2b", "k-contact", K::Contact, &same));
    let bad = records.len();
    records.push(record("crm", "bad-1", K::Person, &[("first_name", "Ann"), ("date_of_birth", "31/02/1999")]));
    records.push(record("crm", "bad-2", K::Person, &[("shoe_size", "5")]));
    records.push(record("CRM!", "bad-3", K::Person, &[("first_name", "Ann")]));
    let submitted = client
        .submit_records(suite.admin(pb::SubmitRecordsRequest { records: records.clone() }))
        .await
        .unwrap()
        .into_inner();
    let reason = |i: usize| submitted.rejected.iter().find(|r| r.index == i as i32).map(|r| r.reason.clone());
    assert!(reason(bad).unwrap().starts_with(&format!("records[{bad}].attributes.date_of_birth: unreadable date")));
    assert!(reason(bad + 1).unwrap().starts_with(&format!("records[{}].attributes.shoe_size", bad + 1)));
    assert!(reason(bad + 2).unwrap().starts_with(&format!("records[{}].source", bad + 2)));
    for i in start..bad {
        assert!(reason(i).is_none(), "{:?}", reason(i));
    }
    assert_eq!(submitted.accepted as usize + submitted.rejected.len(), records.len());

    let run = finished_run(&mut client, &suite, pb::RunMatchingRequest::default()).await;
    assert_eq!(run.state, pb::RunState::Succeeded as i32, "{}", run.error);
    assert!(run.merges > 0 && run.possible_matches > 0 && run.clusters > 0 && !run.weights.is_empty());
    let err = client
        .get_matching_run(suite.admin(pb::GetMatchingRunRequest { run_id: "run_nope".into() }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let a = assigned(&mut client, &suite).await;
    let c = |s: &str, r: &str| a[&(s.to_string(), r.to_string())].customer_id.clone();
    assert!(a.keys().all(|(_, r)| !r.starts_with("bad-")), "rejected records are not stored");
    assert_eq!(c("crm", "t1"), c("shop", "t1"), "Harriet = Hattie");
    assert_eq!(c("crm", "t2"), c("shop", "t2"));
    let people = [c("crm", "t1"), c("crm", "t2"), c("crm", "p1"), c("crm", "p2"), c("web", "h")];
    for i in 0..people.len() {
        for j in i + 1..people.len() {
            assert_ne!(people[i], people[j], "household members {i} and {j} stay apart");
        }
    }
    assert_ne!(c("crm", "k-person"), c("b2b", "k-contact"), "a person and a contact never merge");

    // The merge is in the graph with its evidence.
    let explained =
        client.explain(suite.admin(pb::ExplainRequest { customer_id: c("crm", "t1") })).await.unwrap().into_inner();
    let merge = explained.changes.iter().find(|ch| ch.rule == "probabilistic_match").expect("a probabilistic merge");
    assert_eq!(merge.run_id, run.run_id);
    assert!(merge.match_weight.unwrap() > 0.0 && merge.records.len() == 2 && !merge.comparisons.is_empty());
    assert_eq!(explained.records.len(), 2);

    // CompareRecords explains why twins are not one person.
    let t1 = &records[start];
    let compared = client
        .compare_records(
            suite.admin(pb::CompareRecordsRequest { left: Some(t1.clone()), right: Some(records[start + 2].clone()) }),
        )
        .await
        .unwrap()
        .into_inner();
    let twins = client
        .compare_records(
            suite.admin(pb::CompareRecordsRequest { left: Some(t1.clone()), right: Some(records[start + 1].clone()) }),
        )
        .await
        .unwrap()
        .into_inner();
    assert!(compared.match_weight > twins.match_weight);
    assert_ne!(twins.outcome, pb::MatchOutcome::Match as i32);
    let first = twins.comparisons.iter().find(|x| x.attribute == "first_name").unwrap();
    assert_eq!((first.left_value.as_str(), first.right_value.as_str()), ("harriet", "imogen"));
    let err = client
        .compare_records(suite.admin(pb::CompareRecordsRequest {
            left: Some(t1.clone()),
            right: Some(record("b2b", "x", K::Contact, &[])),
        }))
        .await
        .unwrap_err();
    assert!(err.message().starts_with("right.kind"), "{}", err.message());

    // The household-only record is a possible match of its members: accept one, reject another.
    let tasks = client
        .list_review_tasks(suite.admin(pb::ListReviewTasksRequest { source: "web".into(), ..Default::default() }))
        .await
        .unwrap()
        .into_inner()
        .tasks;
    let of_h: Vec<_> = tasks
        .iter()
        .filter(|t| [t.left.as_ref().unwrap(), t.right.as_ref().unwrap()].iter().any(|r| r.record_id == "h"))
        .collect();
    assert!(of_h.len() >= 2, "{} review tasks of the household record", of_h.len());
    let other_side = |t: &pb::ReviewTask| {
        if t.left.as_ref().unwrap().record_id == "h" { t.right_customer_id.clone() } else { t.left_customer_id.clone() }
    };
    let (accept, reject) = (of_h[0].clone(), of_h[1].clone());
    let accepted = client
        .resolve_review_task(suite.admin(pb::ResolveReviewTaskRequest {
            task_id: accept.task_id.clone(),
            same: true,
            note: "called them".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(accepted.state, pb::ReviewState::Same as i32);
    assert_eq!(accepted.left_customer_id, accepted.right_customer_id);
    assert_eq!(accepted.decided_by, "admin");
    let rejected = client
        .resolve_review_task(suite.admin(pb::ResolveReviewTaskRequest {
            task_id: reject.task_id.clone(),
            same: false,
            note: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rejected.state, pb::ReviewState::Different as i32);
    assert_ne!(rejected.left_customer_id, rejected.right_customer_id);
    let err = client
        .resolve_review_task(suite.admin(pb::ResolveReviewTaskRequest {
            task_id: reject.task_id.clone(),
            same: true,
            note: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let explained = client
        .explain(suite.admin(pb::ExplainRequest { customer_id: accepted.left_customer_id.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert!(explained.changes.iter().any(|ch| ch.rule == "review_same" && ch.review_task_id == accept.task_id));
    let explained = client
        .explain(suite.admin(pb::ExplainRequest { customer_id: rejected.left_customer_id.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert!(explained.changes.iter().any(|ch| ch.rule == "review_different" && ch.review_task_id == reject.task_id));
    let decided = client
        .get_review_task(suite.admin(pb::GetReviewTaskRequest { task_id: reject.task_id.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(decided.state, pb::ReviewState::Different as i32);

    // A second run keeps the decision: the rejected pair stays apart and is not asked again.
    let again = finished_run(&mut client, &suite, pb::RunMatchingRequest::default()).await;
    assert_eq!(again.state, pb::RunState::Succeeded as i32, "{}", again.error);
    let a = assigned(&mut client, &suite).await;
    let h = a[&("web".to_string(), "h".to_string())].customer_id.clone();
    assert_eq!(h, other_side(&accepted));
    assert_ne!(h, other_side(&rejected));
    let asked_again = client
        .list_review_tasks(
            suite.admin(pb::ListReviewTasksRequest { run_id: again.run_id.clone(), ..Default::default() }),
        )
        .await
        .unwrap()
        .into_inner()
        .tasks;
    let pair = |t: &pb::ReviewTask| {
        let mut p = [t.left.as_ref().unwrap().record_id.clone(), t.right.as_ref().unwrap().record_id.clone()];
        p.sort();
        (t.left.as_ref().unwrap().source.clone(), t.right.as_ref().unwrap().source.clone(), p)
    };
    assert!(asked_again.iter().all(|t| pair(t) != pair(&reject) && pair(t) != pair(&accept)));
    let runs =
        client.list_matching_runs(suite.admin(pb::ListMatchingRunsRequest::default())).await.unwrap().into_inner().runs;
    assert_eq!(
        runs.iter().map(|r| r.run_id.clone()).collect::<Vec<_>>(),
        vec![again.run_id.clone(), run.run_id.clone()]
    );
    let err = client
        .cancel_matching_run(suite.admin(pb::CancelMatchingRunRequest { run_id: run.run_id.clone() }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    // Deleting records removes them from the store, not from the graph.
    let deleted = client
        .delete_records(suite.admin(pb::DeleteRecordsRequest {
            records: vec![
                pb::SourceRecordRef { source: "crm".into(), record_id: "k-person".into() },
                pb::SourceRecordRef { source: "crm".into(), record_id: "nope".into() },
            ],
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.deleted, 1);
    suite.stop().await;
}

fn at(seconds: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos: 0 })
}

#[tokio::test]
async fn golden_records_pick_values_by_rule_follow_aliases_mask_national_ids_and_are_audited() {
    use pb::EntityKind as K;
    let config = r#"
[identity.survivorship]
default_rule = "most_recent"
source_priority = ["crm", "loyalty"]
[identity.survivorship.attribute_rules]
first_name = "longest"
phone = "source_priority"
street = "most_frequent"
city = "most_complete_record"
"#;
    let options = rapport_testkit::SuiteOptions::services(&["identity"]).config(config);
    let suite = TestSuite::start_with(options.clone()).await;
    let mut client = IdentityServiceClient::new(suite.channel().await);
    // Background records for realistic weights, then Katherine in three sources.
    let (background, _) = rapport_identity::matching::synth::generate(400, 8, 11);
    let mut records: Vec<pb::SourceRecord> = background.iter().map(rapport_identity::records::to_wire).collect();
    let mut crm = record(
        "crm",
        "c-1",
        K::Person,
        &[
            ("first_name", "Katherine"),
            ("last_name", "Hargreaves"),
            ("date_of_birth", "1985-04-12"),
            ("email", "k.hargreaves@old.example"),
            ("phone", "+44 7700 900123"),
            ("national_id", "QQ 12 34 56 C"),
            ("street", "12 Park Row"),
            ("postcode", "LS1 4AP"),
            ("city", "Leeds"),
        ],
    );
    crm.updated_at = at(1_704_844_800); // 2024-01-10
    let mut loyalty = record(
        "loyalty",
        "l-1",
        K::Person,
        &[
            ("first_name", "Katherine"),
            ("last_name", "Hargreaves"),
            ("date_of_birth", "1985-04-12"),
            ("email", "kate@new.example"),
            ("phone", "+44 7700 900123"),
            ("street", "12 Park Row"),
        ],
    );
    loyalty.updated_at = at(1_725_148_800); // 2024-09-01
    let mut webshop = record(
        "webshop",
        "w-1",
        K::Person,
        &[
            ("first_name", "K."),
            ("last_name", "Hargreaves"),
            ("date_of_birth", "12/04/1985"),
            ("email", "Kate@New.example"),
            ("phone", "+44 7700 900456"),
            ("street", "3 New Street"),
            ("city", "Harrogate"),
        ],
    );
    webshop.updated_at = at(1_748_736_000); // 2025-06-01
    records.extend([crm, loyalty, webshop]);
    let submitted =
        client.submit_records(suite.admin(pb::SubmitRecordsRequest { records })).await.unwrap().into_inner();
    assert!(submitted.rejected.is_empty(), "{:?}", submitted.rejected);
    let run = finished_run(&mut client, &suite, pb::RunMatchingRequest::default()).await;
    assert_eq!(run.state, pb::RunState::Succeeded as i32, "{}", run.error);
    let a = assigned(&mut client, &suite).await;
    let c = |s: &str, r: &str| a[&(s.to_string(), r.to_string())].customer_id.clone();
    let kate = c("crm", "c-1");
    assert_eq!(kate, c("loyalty", "l-1"));
    assert_eq!(kate, c("webshop", "w-1"));

    let golden = |customer_id: &str, paths: &[&str]| pb::GetGoldenRecordRequest {
        customer_id: customer_id.to_string(),
        read_mask: (!paths.is_empty())
            .then(|| prost_types::FieldMask { paths: paths.iter().map(|p| p.to_string()).collect() }),
    };
    let g = client.get_golden_record(suite.admin(golden(&kate, &[]))).await.unwrap().into_inner();
    assert_eq!(g.customer_id, kate);
    assert_eq!(g.kind, K::Person as i32);
    let refs: Vec<_> = g.records.iter().map(|r| (r.source.as_str(), r.record_id.as_str())).collect();
    assert_eq!(refs, vec![("crm", "c-1"), ("loyalty", "l-1"), ("webshop", "w-1")]);
    let v = |name: &str| g.attributes.get(name).unwrap_or_else(|| panic!("no {name} in {:?}", g.attributes));
    let from = |name: &str| {
        let r = v(name).record.clone().unwrap();
        (v(name).value.clone(), r.source, r.record_id)
    };
    use pb::SurvivorshipRule as R;
    // Most recent (the default): the webshop's newer address over the CRM's older one, standardised.
    assert_eq!(from("email"), ("kate@new.example".into(), "webshop".into(), "w-1".into()));
    assert_eq!(v("email").rule, R::MostRecent as i32);
    assert_eq!((v("email").record_count, v("email").agreeing_count), (3, 2));
    assert_eq!(v("email").observed_at, at(1_748_736_000));
    // Source priority: the CRM's phone (the same as loyalty's) over the webshop's newer one.
    assert_eq!(from("phone"), ("+447700900123".into(), "crm".into(), "c-1".into()));
    assert_eq!(v("phone").rule, R::SourcePriority as i32);
    // Most frequent: two records agree on the street; the newer of them is named.
    assert_eq!(from("street"), ("12 park row".into(), "loyalty".into(), "l-1".into()));
    assert_eq!((v("street").rule, v("street").agreeing_count), (R::MostFrequent as i32, 2));
    // Longest: "Katherine" over "K."; of the two records that have it, the newer.
    assert_eq!(from("first_name"), ("katherine".into(), "loyalty".into(), "l-1".into()));
    assert_eq!(v("first_name").rule, R::Longest as i32);
    // Most complete record: the CRM record has the most attributes, so its city beats the newer one.
    assert_eq!(from("city"), ("leeds".into(), "crm".into(), "c-1".into()));
    assert_eq!(v("city").rule, R::MostCompleteRecord as i32);
    // Dates are read as the matcher reads them: all three agree.
    assert_eq!((v("date_of_birth").value.as_str(), v("date_of_birth").agreeing_count), ("1985-04-12", 3));
    // National ids are masked as CompareRecords masks them; the raw value appears nowhere.
    assert_eq!(v("national_id").value, "*******6C");
    assert!(!format!("{g:?}").contains("QQ123456"), "{g:?}");
    assert!(!g.attributes.contains_key("company_name"), "attributes nobody has are absent");
    assert!(g.attributes.values().all(|v| v.candidates.is_empty()), "candidates only when asked for");
    assert_eq!(g.updated_at, at(1_748_736_000), "the newest observation among the surviving values");

    // Candidates with the mask; records only with "records".
    let g = client.get_golden_record(suite.admin(golden(&kate, &["candidates"]))).await.unwrap().into_inner();
    let first = &g.attributes["first_name"];
    let losing: Vec<_> =
        first.candidates.iter().map(|c| (c.value.as_str(), c.record.as_ref().unwrap().source.as_str())).collect();
    assert_eq!(losing, vec![("k", "webshop")]);
    assert_eq!(first.candidates[0].observed_at, at(1_748_736_000));
    assert!(g.records.is_empty(), "records were not asked for");
    let g = client.get_golden_record(suite.admin(golden(&kate, &["records"]))).await.unwrap().into_inner();
    assert!(g.attributes.is_empty() && g.records.len() == 3);

    // A merged-away id answers with the survivor.
    let explained = client.explain(suite.admin(pb::ExplainRequest { customer_id: kate.clone() })).await.unwrap();
    let alias = explained.into_inner().customer.unwrap().aliases.first().cloned().expect("the run merged customers");
    let g = client.get_golden_record(suite.admin(golden(&alias, &[]))).await.unwrap().into_inner();
    assert_eq!((g.customer_id.as_str(), g.records.len()), (kate.as_str(), 3));

    // A customer known only from Resolve has a golden record without attributes or records.
    let resolved = client
        .resolve(suite.admin(resolve_request(vec![id(IdentifierType::Email, "only.resolved@example.com")])))
        .await
        .unwrap()
        .into_inner();
    let g = client.get_golden_record(suite.admin(golden(&resolved.customer_id, &[]))).await.unwrap().into_inner();
    assert_eq!(g.customer_id, resolved.customer_id);
    assert!(g.attributes.is_empty() && g.records.is_empty() && g.updated_at.is_none());

    // Unknown, empty and bad mask paths.
    let err = client.get_golden_record(suite.admin(golden("cus_nobody", &[]))).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{}", err.message());
    let err = client.get_golden_record(suite.admin(golden("  ", &[]))).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("customer_id"), "{}", err.message());
    let err = client.get_golden_record(suite.admin(golden(&kate, &["records", "colour"]))).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("read_mask.paths: unknown path `colour`"), "{}", err.message());

    // GetSettings shows the survivorship configuration.
    let settings = client.get_settings(suite.admin(pb::GetSettingsRequest {})).await.unwrap().into_inner();
    let s = settings.survivorship.unwrap();
    assert_eq!(s.default_rule, R::MostRecent as i32);
    assert_eq!(s.attribute_rules.get("first_name"), Some(&(R::Longest as i32)));
    assert_eq!(s.source_priority, vec!["crm", "loyalty"]);

    // Every read is in identity's audit log (written in the background within 100 ms).
    let settings = TestSuite::settings(&suite.storage, &options).unwrap();
    let db = rapport::services::open_db(&settings, "identity").await.unwrap();
    let mut reads = 0;
    for _ in 0..50 {
        let audit = rapport_storage::Audit::list(&db, &kate, 20).await.unwrap();
        reads = audit.iter().filter(|e| e.action == "golden_record.read" && e.principal == "admin").count();
        if reads == 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(reads, 4, "four golden record reads of Katherine (one by an alias)");
    db.close().await;

    // After erasure nothing about her is shown again.
    use rapport_proto::common::v1::{CustomerRef, EraseCustomerRequest, customer_ref::Ref};
    let customer = Some(CustomerRef { r#ref: Some(Ref::CustomerId(kate.clone())) });
    client.erase_customer(suite.admin(EraseCustomerRequest { customer, reason: "ticket DSR-2".into() })).await.unwrap();
    let g = client.get_golden_record(suite.admin(golden(&kate, &[]))).await.unwrap().into_inner();
    assert!(g.attributes.is_empty() && g.records.is_empty(), "{g:?}");
    suite.stop().await;
}

/// Every text the identity database holds about records and matching (`source_records`, `review_tasks`,
/// `graph_changes`, `identifiers`), hex-decoded where stored as hex, lower-cased.
async fn stored_text(db: &rapport_storage::Db) -> String {
    use rapport_storage::sql::Exec;
    let mut out = String::new();
    for sql in [
        "SELECT source || ' ' || record_id || ' ' || data FROM source_records",
        "SELECT left_record_id || ' ' || right_record_id || ' ' || data FROM review_tasks",
        "SELECT evidence FROM graph_changes",
        "SELECT value FROM identifiers",
    ] {
        let rows: Vec<(String,)> = Exec::Db(db).all(sql, &[]).await.unwrap();
        for (text,) in rows {
            for word in text.split(' ') {
                match word.bytes().all(|b| b.is_ascii_hexdigit()) {
                    true if word.len() % 2 == 0 => {
                        let bytes: Vec<u8> = (0..word.len())
                            .step_by(2)
                            .map(|i| u8::from_str_radix(&word[i..i + 2], 16).unwrap())
                            .collect();
                        out.push_str(&String::from_utf8_lossy(&bytes));
                    }
                    _ => out.push_str(word),
                }
                out.push('\n');
            }
        }
    }
    out.to_lowercase()
}

#[tokio::test]
async fn erasure_removes_the_source_records_review_tasks_and_compared_values_and_refuses_a_resubmission() {
    use pb::EntityKind as K;
    use rapport_proto::common::v1::{CustomerRef, EraseCustomerRequest, customer_ref::Ref};
    let options = rapport_testkit::SuiteOptions::services(&["identity"]);
    let suite = TestSuite::start_with(options.clone()).await;
    let mut client = IdentityServiceClient::new(suite.channel().await);
    // Zephyrine in two sources, her father Graham at the same address, and a household-only record that
    // is a possible match of both.
    let (background, _) = rapport_identity::matching::synth::generate(400, 8, 13);
    let mut records: Vec<pb::SourceRecord> = background.iter().map(rapport_identity::records::to_wire).collect();
    let needles =
        ["zephyrine", "z.hargreaves@old.example", "zeph@new.example", "1911-04-12", "qq 12 34 56 c", "qq123456"];
    let synthetic = format!("{records:?}").to_lowercase();
    assert!(needles.iter().all(|n| !synthetic.contains(n)), "her values are hers alone");
    let home = [
        ("last_name", "Hargreaves"),
        ("street", "12 Park Row"),
        ("postcode", "LS1 4AP"),
        ("city", "Leeds"),
        ("phone", "0113 496 0000"),
    ];
    let member = |source: &str, id: &str, extra: &[(&str, &str)]| at_home(&home, source, id, extra);
    let zeph_crm = member(
        "crm",
        "c-1",
        &[
            ("first_name", "Zephyrine"),
            ("date_of_birth", "1911-04-12"),
            ("email", "z.hargreaves@old.example"),
            ("national_id", "QQ 12 34 56 C"),
        ],
    );
    let zeph_loyalty = member(
        "loyalty",
        "l-1",
        &[("first_name", "Zephyrine"), ("date_of_birth", "12/04/1911"), ("email", "zeph@new.example")],
    );
    let graham = member("crm", "p-1", &[("first_name", "Graham"), ("date_of_birth", "1958-07-01")]);
    records.extend([zeph_crm.clone(), zeph_loyalty.clone(), graham.clone(), member("web", "h", &[])]);
    let submitted =
        client.submit_records(suite.admin(pb::SubmitRecordsRequest { records })).await.unwrap().into_inner();
    assert!(submitted.rejected.is_empty(), "{:?}", submitted.rejected);
    let run = finished_run(&mut client, &suite, pb::RunMatchingRequest::default()).await;
    assert_eq!(run.state, pb::RunState::Succeeded as i32, "{}", run.error);
    let before = assigned(&mut client, &suite).await;
    let c = |a: &std::collections::HashMap<(String, String), pb::RecordAssignment>, s: &str, r: &str| {
        a.get(&(s.to_string(), r.to_string())).map(|x| x.customer_id.clone())
    };
    let zeph = c(&before, "crm", "c-1").unwrap();
    assert_eq!(c(&before, "loyalty", "l-1").unwrap(), zeph);
    let dad = c(&before, "crm", "p-1").unwrap();
    assert_ne!(dad, zeph);
    let explained = client.explain(suite.admin(pb::ExplainRequest { customer_id: zeph.clone() })).await.unwrap();
    let explained = explained.into_inner();
    assert_eq!(explained.records.len(), 2);
    let merge = explained.changes.iter().find(|ch| ch.rule == "probabilistic_match").expect("a probabilistic merge");
    assert!(!merge.comparisons.is_empty());
    let alias = explained.customer.unwrap().aliases.first().cloned().expect("the run merged two customers");

    let is_hers = |r: &pb::SourceRecord| {
        (r.source == "crm" && r.record_id == "c-1") || (r.source == "loyalty" && r.record_id == "l-1")
    };
    let tasks = |client: &mut IdentityServiceClient<tonic::transport::Channel>| {
        let request = suite.admin(pb::ListReviewTasksRequest {
            include_decided: true,
            page: Some(rapport_proto::common::v1::PageRequest { page_size: 1000, page_token: String::new() }),
            ..Default::default()
        });
        let mut client = client.clone();
        async move { client.list_review_tasks(request).await.unwrap().into_inner().tasks }
    };
    let all_tasks = tasks(&mut client).await;
    let hers: Vec<_> = all_tasks
        .iter()
        .filter(|t| is_hers(t.left.as_ref().unwrap()) || is_hers(t.right.as_ref().unwrap()))
        .cloned()
        .collect();
    assert!(!hers.is_empty(), "the household record is a possible match of Zephyrine");
    let others: Vec<_> = all_tasks.iter().filter(|t| !hers.contains(t)).map(|t| t.task_id.clone()).collect();
    // One of her tasks decided: the refusal is a graph change with her values as evidence.
    client
        .resolve_review_task(suite.admin(pb::ResolveReviewTaskRequest {
            task_id: hers[0].task_id.clone(),
            same: false,
            note: String::new(),
        }))
        .await
        .unwrap();

    let settings = TestSuite::settings(&suite.storage, &options).unwrap();
    let db = rapport::services::open_db(&settings, "identity").await.unwrap();
    // Her values as submitted and as the matcher standardised them.
    let text = stored_text(&db).await;
    for n in ["zephyrine", "z.hargreaves@old.example", "zeph@new.example", "1911-04-12", "qq 12 34 56 c"] {
        assert!(text.contains(n), "the check reads the stored values: {n} is stored before the erasure");
    }

    let customer = Some(CustomerRef { r#ref: Some(Ref::CustomerId(alias.clone())) });
    let erased = client
        .erase_customer(suite.admin(EraseCustomerRequest { customer, reason: "ticket DSR-3".into() }))
        .await
        .unwrap()
        .into_inner();
    // Two records, her review tasks, the merge and the refusal at least.
    assert!(erased.records_erased >= 2 + hers.len() as i64 + 2, "{erased:?}");

    // No read shows her records again.
    let explained =
        client.explain(suite.admin(pb::ExplainRequest { customer_id: zeph.clone() })).await.unwrap().into_inner();
    assert!(explained.customer.as_ref().unwrap().erased);
    assert!(explained.records.is_empty() && explained.changes.is_empty(), "{explained:?}");
    let after = assigned(&mut client, &suite).await;
    assert!(c(&after, "crm", "c-1").is_none() && c(&after, "loyalty", "l-1").is_none());
    let of_zeph = client
        .list_record_assignments(
            suite.admin(pb::ListRecordAssignmentsRequest { customer_id: zeph.clone(), ..Default::default() }),
        )
        .await
        .unwrap()
        .into_inner();
    assert!(of_zeph.assignments.is_empty(), "{of_zeph:?}");
    let left = tasks(&mut client).await;
    assert!(left.iter().all(|t| !is_hers(t.left.as_ref().unwrap()) && !is_hers(t.right.as_ref().unwrap())));
    for t in &hers {
        let err = client
            .get_review_task(suite.admin(pb::GetReviewTaskRequest { task_id: t.task_id.clone() }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    }
    let golden = |customer_id: &str| pb::GetGoldenRecordRequest { customer_id: customer_id.into(), read_mask: None };
    let g = client.get_golden_record(suite.admin(golden(&zeph))).await.unwrap().into_inner();
    assert!(g.attributes.is_empty() && g.records.is_empty(), "{g:?}");
    // Her values are nowhere in the database; the tombstones hold hashes, not the record ids.
    let text = stored_text(&db).await;
    for n in needles {
        assert!(!text.contains(n), "{n} is still stored after the erasure");
    }
    let tombstones: Vec<(String,)> =
        rapport_storage::sql::Exec::Db(&db).all("SELECT record_hash FROM erased_records", &[]).await.unwrap();
    assert_eq!(tombstones.len(), 2);
    assert!(tombstones.iter().all(|(h,)| h.len() == 64 && !h.contains("c-1")));

    // Everyone else is untouched: records, assignments, review tasks, golden record.
    for (key, a) in &before {
        if a.customer_id != zeph {
            assert_eq!(after.get(key).map(|x| &x.customer_id), Some(&a.customer_id), "{key:?}");
        }
    }
    let left_ids: Vec<_> = left.iter().map(|t| t.task_id.clone()).collect();
    assert_eq!(left_ids.iter().collect::<std::collections::BTreeSet<_>>(), others.iter().collect());
    let g = client.get_golden_record(suite.admin(golden(&dad))).await.unwrap().into_inner();
    assert_eq!(g.attributes["first_name"].value, "graham");

    // A re-submission of her records is refused per record; other records are stored as before.
    let newcomer = record("crm", "n-1", K::Person, &[("first_name", "Nadia"), ("last_name", "Okafor")]);
    let again = client
        .submit_records(suite.admin(pb::SubmitRecordsRequest {
            records: vec![graham.clone(), zeph_crm.clone(), newcomer, zeph_loyalty.clone()],
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.accepted, 2);
    let refused: Vec<_> = again.rejected.iter().map(|r| r.index).collect();
    assert_eq!(refused, vec![1, 3]);
    assert!(again.rejected[0].reason.starts_with("records[1]: erased"), "{:?}", again.rejected);
    assert!(again.rejected[1].reason.starts_with("records[3]: erased"), "{:?}", again.rejected);
    let run = finished_run(&mut client, &suite, pb::RunMatchingRequest::default()).await;
    assert_eq!(run.state, pb::RunState::Succeeded as i32, "{}", run.error);
    let last = assigned(&mut client, &suite).await;
    assert!(c(&last, "crm", "c-1").is_none() && c(&last, "loyalty", "l-1").is_none());
    assert_eq!(c(&last, "crm", "p-1"), Some(dad.clone()), "an idempotent re-submission keeps the customer");
    assert!(c(&last, "crm", "n-1").is_some());
    let text = stored_text(&db).await;
    for n in needles {
        assert!(!text.contains(n), "{n} is stored again");
    }
    db.close().await;
    suite.stop().await;
}

/// B2B records that name their parent record build the account -> site -> contact hierarchy when matched,
/// across sources, through the same rules as LinkEntities; a second run adds nothing, and a parent the
/// hierarchy refuses (a contact under a person) is skipped, the rest linked.
#[tokio::test]
async fn records_with_parents_build_the_hierarchy_when_matched() {
    let suite = TestSuite::start().await;
    let mut client = IdentityServiceClient::new(suite.channel().await);
    let parent = |source: &str, id: &str| Some(pb::SourceRecordRef { source: source.into(), record_id: id.into() });
    let account = record(
        "erp",
        "A1",
        pb::EntityKind::Account,
        &[("company_name", "Acme Tooling GmbH"), ("company_id", "31-455-1234")],
    );
    let site = pb::SourceRecord {
        parent: parent("erp", "A1"),
        ..record("erp", "S1", pb::EntityKind::Site, &[("company_name", "Acme Tooling Werk Nord"), ("city", "Hamburg")])
    };
    let contact = pb::SourceRecord {
        parent: parent("erp", "S1"),
        ..record(
            "crm",
            "C1",
            pb::EntityKind::Contact,
            &[("full_name", "Jana Ortmann"), ("email", "j.ortmann@acme.example")],
        )
    };
    let person =
        record("shop", "P1", pb::EntityKind::Person, &[("full_name", "Karl Busch"), ("email", "karl@example.com")]);
    let stray = pb::SourceRecord {
        parent: parent("shop", "P1"),
        ..record("crm", "C2", pb::EntityKind::Contact, &[("full_name", "Lea Brandt"), ("email", "lea@acme.example")])
    };
    let submitted = client
        .submit_records(suite.admin(pb::SubmitRecordsRequest { records: vec![contact, stray, site, account, person] }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(submitted.accepted, 5, "{submitted:?}");
    let run = finished_run(&mut client, &suite, pb::RunMatchingRequest::default()).await;
    assert_eq!(run.state, pb::RunState::Succeeded as i32, "{run:?}");
    let ids = assigned(&mut client, &suite).await;
    let of = |s: &str, r: &str| ids[&(s.to_string(), r.to_string())].customer_id.clone();
    let h = client
        .get_hierarchy(suite.admin(pb::GetHierarchyRequest { customer_id: of("crm", "C1"), ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    let ancestors: Vec<String> = h.ancestors.iter().map(|n| n.customer_id.clone()).collect();
    assert_eq!(ancestors, vec![of("erp", "A1"), of("erp", "S1")], "account, then site: {h:?}");
    let stray = client
        .get_hierarchy(suite.admin(pb::GetHierarchyRequest { customer_id: of("crm", "C2"), ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    assert!(stray.ancestors.is_empty(), "a contact is never linked under a person: {stray:?}");

    // Matching again links nothing twice: the account still has one site with one contact.
    let again = finished_run(&mut client, &suite, pb::RunMatchingRequest::default()).await;
    assert_eq!(again.state, pb::RunState::Succeeded as i32, "{again:?}");
    let top = client
        .get_hierarchy(suite.admin(pb::GetHierarchyRequest {
            customer_id: of("erp", "A1"),
            depth: 2,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let below: Vec<String> = top.children.iter().map(|n| n.customer_id.clone()).collect();
    assert_eq!(below, vec![of("erp", "S1"), of("crm", "C1")], "{top:?}");
    suite.stop().await;
}
