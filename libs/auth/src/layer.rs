use std::{
    sync::Arc,
    task::{Context, Poll},
};

use futures::future::{BoxFuture, FutureExt};
use tower::{Layer, Service};

use crate::{AuthError, Authenticator};

/// Paths every caller may use without a token: health checks and reflection.
fn is_public(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/grpc.reflection.")
}

/// Checks the bearer token of every gRPC request against the scope of its method.
#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
}

impl AuthLayer {
    /// A layer checking tokens with `auth`.
    pub fn new(auth: Arc<Authenticator>) -> Self {
        Self { auth }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthService { inner, auth: self.auth.clone() }
    }
}

/// The service made by [`AuthLayer`].
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

fn bearer(headers: &http::HeaderMap) -> &str {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .unwrap_or("")
}

impl<S, B> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_string();
        if is_public(&path) {
            return self.inner.call(req).boxed();
        }
        let principal = match self.auth.authenticate(bearer(req.headers())) {
            Ok(p) => p,
            Err(e) => {
                let message = match e {
                    AuthError::Missing => "missing bearer token: send `authorization: Bearer <token>`",
                    AuthError::Invalid => "invalid bearer token",
                    AuthError::Expired => "bearer token expired",
                };
                let status = tonic::Status::unauthenticated(message);
                return futures::future::ready(Ok(status.into_http())).boxed();
            }
        };
        // Methods that are not ours fall through to the router, which answers UNIMPLEMENTED.
        if let Some(scope) = rapport_proto::required_scope(&path)
            && !principal.allows_call(&path, scope)
        {
            tracing::info!(caller = %principal.name, method = %path, scope, "permission denied");
            let status = tonic::Status::permission_denied(format!("{path} requires the scope `{scope}`"));
            return futures::future::ready(Ok(status.into_http())).boxed();
        }
        req.extensions_mut().insert(principal);
        // Take the service that was polled ready and leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        async move { inner.call(req).await }.boxed()
    }
}
