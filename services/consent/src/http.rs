//! The unsubscribe, double opt-in and preference-centre pages on the HTTP port. A GET only shows what the
//! link would do (mail scanners follow links); a POST does it: the RFC 8058 one-click POST
//! (`List-Unsubscribe=One-Click`), the page's button, or the preference centre's form (through the same
//! code as UpdatePreferences). Bad, expired and used links answer a plain page and change nothing.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use rapport_errors::ErrorCode;
use rapport_proto::consent::v1::{ConsentStatus, PreferenceChange, TokenKind};

use crate::grpc::Consent;
use crate::preferences::Switch;
use crate::tokens::TokenError;

/// The routes, served on the HTTP port.
pub fn router(consent: Arc<Consent>) -> Router {
    Router::new()
        .route("/consent/unsubscribe", get(unsubscribe_page).post(unsubscribe))
        .route("/consent/confirm", get(confirm_page).post(confirm))
        .route("/consent/preferences", get(preferences_page).post(update_preferences))
        .with_state(consent)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title></head><body><h1>{t}</h1>{body}</body></html>",
        t = escape(title)
    );
    (status, [("cache-control", "no-store")], Html(html)).into_response()
}

fn error_page(e: &rapport_errors::Error) -> Response {
    let (status, title, text) = match e.code() {
        ErrorCode::InvalidArgument => {
            (StatusCode::BAD_REQUEST, "Invalid link", "This link is not valid. It may have been altered or mistyped.")
        }
        ErrorCode::FailedPrecondition if e.to_string().contains("expired") => {
            (StatusCode::GONE, "Link expired", "This link has expired. Nothing was changed.")
        }
        ErrorCode::FailedPrecondition if e.to_string().contains("already used") => {
            (StatusCode::CONFLICT, "Link already used", "This link was already used. Nothing was changed.")
        }
        ErrorCode::FailedPrecondition | ErrorCode::NotFound => {
            (StatusCode::GONE, "Link no longer valid", "This link can no longer be used. Nothing was changed.")
        }
        _ => (StatusCode::SERVICE_UNAVAILABLE, "Try again later", "We could not process this link right now."),
    };
    page(status, title, &format!("<p>{}</p>", escape(text)))
}

fn token(q: &HashMap<String, String>) -> String {
    q.get("token").cloned().unwrap_or_default()
}

/// The page a GET of a link shows: what the link would do, with a button that POSTs it; or why it cannot.
async fn link_page(
    c: &Consent,
    q: &HashMap<String, String>,
    kind: TokenKind,
    title: &str,
    question: &str,
    form: &str,
) -> Response {
    let t = token(q);
    match c.describe(&t).await {
        Ok(d) if d.kind == kind as i32 && d.valid => page(
            StatusCode::OK,
            title,
            &format!(
                "<p>{question} {}?</p><form method=\"post\" action=\"{}?token={}\">{form}</form>",
                escape(&d.masked_contact_point),
                match kind {
                    TokenKind::DoubleOptIn => "/consent/confirm",
                    _ => "/consent/unsubscribe",
                },
                escape(&t)
            ),
        ),
        Ok(d) if d.kind != kind as i32 => error_page(&TokenError::BadSignature.to_error()),
        Ok(d) if d.used => error_page(&TokenError::Used.to_error()),
        Ok(_) => error_page(&TokenError::Expired.to_error()),
        Err(e) => error_page(&e),
    }
}

async fn unsubscribe_page(State(c): State<Arc<Consent>>, Query(q): Query<HashMap<String, String>>) -> Response {
    let form = "<input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">\
                <button type=\"submit\">Unsubscribe</button>";
    link_page(&c, &q, TokenKind::Unsubscribe, "Unsubscribe", "Stop messages to", form).await
}

async fn unsubscribe(State(c): State<Arc<Consent>>, Query(q): Query<HashMap<String, String>>) -> Response {
    match c.unsubscribe_with(&token(&q), None, None).await {
        Ok(_) => {
            page(StatusCode::OK, "Unsubscribed", "<p>You are unsubscribed. You will not get these messages again.</p>")
        }
        Err(e) => error_page(&e),
    }
}

async fn confirm_page(State(c): State<Arc<Consent>>, Query(q): Query<HashMap<String, String>>) -> Response {
    let form = "<button type=\"submit\">Confirm</button>";
    link_page(&c, &q, TokenKind::DoubleOptIn, "Confirm your subscription", "Confirm messages to", form).await
}

async fn confirm(State(c): State<Arc<Consent>>, Query(q): Query<HashMap<String, String>>) -> Response {
    match c.confirm_with(&token(&q), None, None).await {
        Ok(_) => page(StatusCode::OK, "Confirmed", "<p>Thank you, your subscription is confirmed.</p>"),
        Err(e) => error_page(&e),
    }
}

/// The preference centre's form: a row per switch (masked contact points only), each a checkbox named by
/// its switch key; the hidden `row` fields say which switches the form showed, so an unticked box means off.
fn preferences_form(c: &Consent, token: &str, switches: &[Switch], note: &str) -> Response {
    let mut rows = String::new();
    for s in switches {
        let r = &s.row;
        let channel = rapport_proto::common::v1::Channel::try_from(r.channel)
            .map(|c| c.as_str_name().trim_start_matches("CHANNEL_").replace('_', " ").to_ascii_lowercase())
            .unwrap_or_default();
        let purpose = r.purpose.as_ref().map(|p| p.name.replace('_', " ")).unwrap_or_default();
        let to = r.contact_point.as_ref().map_or("all your contact points".to_string(), |cp| cp.value.clone());
        // A customer-wide grant cannot go through double opt-in: it is given per address instead.
        let locked = s.cp.is_none() && !r.allowed && c.store.settings.needs_double_opt_in(r.channel);
        let state = if r.suppressed {
            " (blocked)"
        } else if r.status == ConsentStatus::Pending as i32 {
            " (awaiting confirmation)"
        } else if locked {
            " (confirm per address below)"
        } else {
            ""
        };
        let key = escape(&s.key);
        let hidden =
            if locked { String::new() } else { format!("<input type=\"hidden\" name=\"row\" value=\"{key}\">") };
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{hidden}<input type=\"checkbox\" name=\"on\" value=\"{key}\"{}{}>{}</td></tr>",
            escape(&channel),
            escape(&purpose),
            escape(&to),
            if r.allowed { " checked" } else { "" },
            if locked { " disabled" } else { "" },
            escape(state),
        ));
    }
    page(
        StatusCode::OK,
        "Your preferences",
        &format!(
            "{note}<form method=\"post\" action=\"/consent/preferences?token={}\"><table>\
             <tr><th>Channel</th><th>Purpose</th><th>To</th><th>Allowed</th></tr>{rows}</table>\
             <button type=\"submit\">Save</button></form>",
            escape(token)
        ),
    )
}

async fn preferences_page(State(c): State<Arc<Consent>>, Query(q): Query<HashMap<String, String>>) -> Response {
    let t = token(&q);
    let shown = async {
        let subject = c.token_preference_subject(&t).await?;
        c.switches(&subject).await
    };
    match shown.await {
        Ok(switches) => preferences_form(&c, &t, &switches, ""),
        Err(e) => error_page(&e),
    }
}

async fn update_preferences(
    State(c): State<Arc<Consent>>,
    Query(q): Query<HashMap<String, String>>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let t = token(&q);
    let saved = async {
        let subject = c.token_preference_subject(&t).await?;
        let shown: Vec<&str> = form.iter().filter(|(k, _)| k == "row").map(|(_, v)| v.as_str()).collect();
        let on: Vec<&str> = form.iter().filter(|(k, _)| k == "on").map(|(_, v)| v.as_str()).collect();
        let changes: Vec<PreferenceChange> = c
            .switches(&subject)
            .await?
            .into_iter()
            .filter(|s| shown.contains(&s.key.as_str()))
            .map(|s| PreferenceChange {
                channel: s.row.channel,
                purpose: s.row.purpose,
                contact_point: s.cp.as_ref().and_then(|cp| cp.wire()),
                allow: on.contains(&s.key.as_str()),
            })
            .collect();
        if !changes.is_empty() {
            let changes = c.preference_changes(&subject, &changes).await?;
            c.update_preferences_with(crate::preferences::SOURCE, &subject, changes, None, None).await?;
        }
        c.switches(&subject).await
    };
    match saved.await {
        Ok(switches) => preferences_form(&c, &t, &switches, "<p>Your preferences are saved.</p>"),
        Err(e) => error_page(&e),
    }
}
