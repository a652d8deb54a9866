//! The unsubscribe and double opt-in pages on the HTTP port. A GET only shows what the link would do
//! (mail scanners follow links); a POST does it: the RFC 8058 one-click POST (`List-Unsubscribe=One-Click`)
//! or the page's button. Bad, expired and used links answer a plain page and change nothing.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use rapport_errors::ErrorCode;
use rapport_proto::consent::v1::TokenKind;

use crate::grpc::Consent;
use crate::tokens::TokenError;

/// The routes, served on the HTTP port.
pub fn router(consent: Arc<Consent>) -> Router {
    Router::new()
        .route("/consent/unsubscribe", get(unsubscribe_page).post(unsubscribe))
        .route("/consent/confirm", get(confirm_page).post(confirm))
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
        ErrorCode::FailedPrecondition => {
            (StatusCode::CONFLICT, "Link already used", "This link was already used. Nothing was changed.")
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
