//! Tracking and feedback on the HTTP port: the open pixel (`/delivery/o/{message}/{signature}.gif`),
//! the signed click redirect (`/delivery/c/{message}?u=<target>&s=<signature>`, which refuses a forged or
//! altered link with a 400 page and is never an open redirect), and the bounce and complaint intake
//! (`POST /delivery/feedback`, documented in docs/delivery.md). Each becomes an engagement event on the
//! delivery feed: profile puts it on the timeline with the decision id, consent suppresses the address
//! after a hard bounce or a complaint.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use rapport_errors::Error;
use rapport_proto::delivery::v1::{EngagementKind, MessageStatus};
use serde::Deserialize;

use crate::core::Core;
use crate::domain::tracking::html_escape;
use crate::store::messages::{Change, MessageRow};

/// A transparent 1x1 GIF.
const PIXEL: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff,
    0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x02,
    0x02, 0x44, 0x01, 0x00, 0x3b,
];

/// The routes.
pub fn router(core: Arc<Core>) -> Router {
    Router::new()
        .route("/delivery/o/{message_id}/{signature}", get(open))
        .route("/delivery/c/{message_id}", get(click))
        .route("/delivery/feedback", post(feedback))
        .with_state(core)
}

fn page(status: StatusCode, title: &str, text: &str) -> Response {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title></head><body><h1>{t}</h1><p>{}</p></body></html>",
        html_escape(text),
        t = html_escape(title)
    );
    (status, [(header::CACHE_CONTROL, "no-store")], Html(html)).into_response()
}

/// What a kind of engagement does to the message's status: the new status and the statuses it may
/// follow (a click after an open, never an open after a click).
fn transition(kind: EngagementKind) -> Option<(MessageStatus, Vec<MessageStatus>)> {
    use MessageStatus::*;
    match kind {
        EngagementKind::Opened => Some((Opened, vec![Sent, Delivered])),
        EngagementKind::Clicked => Some((Clicked, vec![Sent, Delivered, Opened])),
        EngagementKind::HardBounce => Some((Bounced, vec![Sent, Delivered])),
        _ => None,
    }
}

/// Records an engagement with `row`: its status change (when it is one) with history, and the
/// engagement event. A repeated open records nothing new.
pub async fn engage(
    core: &Core,
    row: &MessageRow,
    kind: EngagementKind,
    url: &str,
    detail: &str,
) -> Result<bool, Error> {
    let engagement = core.engagement_event(row, kind, url, detail, false);
    let label = kind.as_str_name().trim_start_matches("ENGAGEMENT_KIND_").to_ascii_lowercase();
    metrics::counter!("rapport_delivery_engagements_total", "kind" => label.clone()).increment(1);
    let detail =
        if detail.is_empty() { label.replace('_', " ") } else { format!("{}: {detail}", label.replace('_', " ")) };
    let detail = if url.is_empty() { detail } else { format!("{detail} {url}") };
    if let Some((status, from)) = transition(kind) {
        let change = Change {
            message_id: row.message_id.clone(),
            status: status as i32,
            from: from.iter().map(|s| *s as i32).collect(),
            detail: detail.clone(),
            history: true,
            events: vec![core.status_event(row, status, &detail), engagement.clone()],
            ..Default::default()
        };
        if core.messages.apply(&[change]).await?.first().copied().unwrap_or(false) {
            return Ok(true);
        }
        if kind == EngagementKind::Opened {
            return Ok(false);
        }
    }
    // No status change (a second click, a complaint, a soft bounce): history and the event.
    let change = Change {
        message_id: row.message_id.clone(),
        status: row.status as i32,
        detail,
        history: true,
        events: vec![engagement],
        ..Default::default()
    };
    core.messages.apply(&[change]).await?;
    Ok(true)
}

async fn open(State(core): State<Arc<Core>>, Path((message_id, signature)): Path<(String, String)>) -> Response {
    let signature = signature.trim_end_matches(".gif");
    if !core.links.verify_open(&message_id, signature) {
        return page(StatusCode::BAD_REQUEST, "Invalid link", "This link is not valid.");
    }
    if let Ok(Some(row)) = core.messages.get(&message_id).await
        && let Err(e) = engage(&core, &row, EngagementKind::Opened, "", "").await
    {
        tracing::warn!(error = %e, "open not recorded");
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "image/gif"), (header::CACHE_CONTROL, "no-store, no-cache, must-revalidate")],
        PIXEL,
    )
        .into_response()
}

async fn click(
    State(core): State<Arc<Core>>,
    Path(message_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (Some(target), Some(signature)) = (q.get("u"), q.get("s")) else {
        return page(
            StatusCode::BAD_REQUEST,
            "Invalid link",
            "This link is not valid. It may have been altered or mistyped.",
        );
    };
    if !core.links.verify_click(&message_id, target, signature) {
        return page(
            StatusCode::BAD_REQUEST,
            "Invalid link",
            "This link is not valid. It may have been altered or mistyped.",
        );
    }
    if let Ok(Some(row)) = core.messages.get(&message_id).await
        && let Err(e) = engage(&core, &row, EngagementKind::Clicked, target, "").await
    {
        tracing::warn!(error = %e, "click not recorded");
    }
    (StatusCode::FOUND, [(header::LOCATION, target.as_str()), (header::CACHE_CONTROL, "no-store")]).into_response()
}

/// One report of the intake.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Report {
    message_id: String,
    /// delivered, hard_bounce, soft_bounce, complaint, unsubscribe.
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    detail: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Reports {
    events: Vec<Report>,
}

fn json_error(status: StatusCode, message: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], serde_json::json!({ "error": message }).to_string())
        .into_response()
}

async fn feedback(State(core): State<Arc<Core>>, headers: HeaderMap, body: Bytes) -> Response {
    let token = core.settings.feedback_token.expose();
    if token.is_empty() {
        return json_error(
            StatusCode::NOT_FOUND,
            "the feedback intake is off (delivery.feedback_token is not set)".into(),
        );
    }
    let given =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let ok = given.is_some_and(|g| {
        g.len() == token.len() && g.bytes().zip(token.bytes()).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0
    });
    if !ok {
        return json_error(
            StatusCode::UNAUTHORIZED,
            "authorization: a bearer token equal to delivery.feedback_token is required".into(),
        );
    }
    if body.len() > 1024 * 1024 {
        return json_error(StatusCode::PAYLOAD_TOO_LARGE, "body: at most 1 MiB".into());
    }
    let reports: Reports = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, format!("body: {e}")),
    };
    if reports.events.is_empty() || reports.events.len() > 1000 {
        return json_error(StatusCode::BAD_REQUEST, "events: between 1 and 1,000 reports".into());
    }
    for (i, r) in reports.events.iter().enumerate() {
        if !matches!(r.kind.as_str(), "delivered" | "hard_bounce" | "soft_bounce" | "complaint" | "unsubscribe") {
            return json_error(
                StatusCode::BAD_REQUEST,
                format!(
                    "events[{i}].type: `{}` is not delivered, hard_bounce, soft_bounce, complaint or unsubscribe",
                    r.kind
                ),
            );
        }
        if r.message_id.trim().is_empty() {
            return json_error(StatusCode::BAD_REQUEST, format!("events[{i}].message_id: is required"));
        }
        if r.detail.len() > 1000 {
            return json_error(StatusCode::BAD_REQUEST, format!("events[{i}].detail: at most 1,000 characters"));
        }
    }
    let mut accepted = 0;
    let mut unknown = Vec::new();
    for r in &reports.events {
        // The message id as sent (`<msg_…@domain>` from a bounce's headers) or bare.
        let id = r.message_id.trim().trim_start_matches('<').trim_end_matches('>');
        let id = id.split('@').next().unwrap_or(id);
        let row = match core.messages.get(id).await {
            Ok(Some(row)) => row,
            Ok(None) => {
                unknown.push(r.message_id.clone());
                continue;
            }
            Err(e) => {
                return json_error(StatusCode::SERVICE_UNAVAILABLE, format!("try again later ({})", e.code_name()));
            }
        };
        let result = match r.kind.as_str() {
            "delivered" => {
                let change = Change {
                    message_id: row.message_id.clone(),
                    status: MessageStatus::Delivered as i32,
                    from: vec![MessageStatus::Sent as i32],
                    detail: r.detail.clone(),
                    history: true,
                    events: vec![core.status_event(&row, MessageStatus::Delivered, &r.detail)],
                    ..Default::default()
                };
                core.messages.apply(&[change]).await.map(|_| true)
            }
            "hard_bounce" => engage(&core, &row, EngagementKind::HardBounce, "", &r.detail).await,
            "soft_bounce" => engage(&core, &row, EngagementKind::SoftBounce, "", &r.detail).await,
            "complaint" => engage(&core, &row, EngagementKind::Complaint, "", &r.detail).await,
            _ => engage(&core, &row, EngagementKind::Unsubscribed, "", &r.detail).await,
        };
        match result {
            Ok(_) => accepted += 1,
            Err(e) => {
                return json_error(StatusCode::SERVICE_UNAVAILABLE, format!("try again later ({})", e.code_name()));
            }
        }
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({ "accepted": accepted, "unknown": unknown }).to_string(),
    )
        .into_response()
}

trait CodeName {
    fn code_name(&self) -> String;
}

impl CodeName for Error {
    fn code_name(&self) -> String {
        format!("{:?}", self.code())
    }
}
