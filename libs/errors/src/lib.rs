//! Domain errors and the one place where they become gRPC statuses.
//!
//! Every service defines its own `thiserror` enum and implements [`DomainError`] for it: the code says
//! which class of failure it is, the public message is what a caller may read. [`to_status`] is the only
//! function that builds a [`tonic::Status`] from a domain error, so internal detail (SQL text, file paths,
//! customer data) reaches the logs and never the wire.

use std::fmt;

/// The classes of failure a caller can act on; each maps to exactly one gRPC code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The request is malformed; the message names the field.
    InvalidArgument,
    /// The thing asked for does not exist.
    NotFound,
    /// The thing to create exists already.
    AlreadyExists,
    /// The request is valid but the system is not in a state to accept it.
    FailedPrecondition,
    /// A concurrent change won; retrying may succeed.
    Aborted,
    /// No valid credentials.
    Unauthenticated,
    /// Valid credentials without the required scope.
    PermissionDenied,
    /// A limit (rate, size, concurrency, quota) was hit.
    ResourceExhausted,
    /// A dependency (database, cache, another service) is not reachable; retry later.
    Unavailable,
    /// A deadline passed before the work finished.
    DeadlineExceeded,
    /// A position past the valid range, e.g. a feed position older than the outbox retention kept.
    OutOfRange,
    /// The operation is not implemented (yet).
    Unimplemented,
    /// A bug or an unexpected failure; details are in the logs only.
    Internal,
}

impl ErrorCode {
    /// The gRPC code of this class. This match is the error table of the whole product.
    pub fn grpc_code(self) -> tonic::Code {
        match self {
            ErrorCode::InvalidArgument => tonic::Code::InvalidArgument,
            ErrorCode::NotFound => tonic::Code::NotFound,
            ErrorCode::AlreadyExists => tonic::Code::AlreadyExists,
            ErrorCode::FailedPrecondition => tonic::Code::FailedPrecondition,
            ErrorCode::Aborted => tonic::Code::Aborted,
            ErrorCode::Unauthenticated => tonic::Code::Unauthenticated,
            ErrorCode::PermissionDenied => tonic::Code::PermissionDenied,
            ErrorCode::ResourceExhausted => tonic::Code::ResourceExhausted,
            ErrorCode::Unavailable => tonic::Code::Unavailable,
            ErrorCode::DeadlineExceeded => tonic::Code::DeadlineExceeded,
            ErrorCode::OutOfRange => tonic::Code::OutOfRange,
            ErrorCode::Unimplemented => tonic::Code::Unimplemented,
            ErrorCode::Internal => tonic::Code::Internal,
        }
    }

    /// Whether the message of an error of this class may be shown to the caller.
    fn is_public(self) -> bool {
        !matches!(self, ErrorCode::Internal | ErrorCode::Unavailable)
    }
}

/// A domain error of one of the services.
pub trait DomainError: std::error::Error {
    /// The class of the failure.
    fn error_code(&self) -> ErrorCode;
}

/// Builds the status a caller sees. Internal and unavailable errors are logged with their detail and
/// answered with a generic message; all others carry their own message, which must name the field or the
/// thing that failed and must not contain personal data.
pub fn to_status<E: DomainError + ?Sized>(err: &E) -> tonic::Status {
    let code = err.error_code();
    if code.is_public() {
        tonic::Status::new(code.grpc_code(), err.to_string())
    } else {
        tracing::error!(error = %err, "request failed");
        let message = match code {
            ErrorCode::Unavailable => "a dependency is unavailable, retry later",
            _ => "internal error",
        };
        tonic::Status::new(code.grpc_code(), message)
    }
}

/// A general-purpose error for code shared between services (validation helpers, storage).
#[derive(Debug, thiserror::Error)]
pub struct Error {
    code: ErrorCode,
    message: String,
}

impl Error {
    /// An error of the given class.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    /// A bad field: the message should read like "`field`: what is wrong".
    pub fn invalid(field: &str, problem: impl fmt::Display) -> Self {
        Self::new(ErrorCode::InvalidArgument, format!("{field}: {problem}"))
    }

    /// A missing thing.
    pub fn not_found(what: impl fmt::Display) -> Self {
        Self::new(ErrorCode::NotFound, format!("{what} not found"))
    }

    /// An unexpected failure; the message goes to the logs only.
    pub fn internal(message: impl fmt::Display) -> Self {
        Self::new(ErrorCode::Internal, message.to_string())
    }

    /// A dependency that could not be reached; the message goes to the logs only.
    pub fn unavailable(message: impl fmt::Display) -> Self {
        Self::new(ErrorCode::Unavailable, message.to_string())
    }

    /// The class of this error.
    pub fn code(&self) -> ErrorCode {
        self.code
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl DomainError for Error {
    fn error_code(&self) -> ErrorCode {
        self.code
    }
}

/// Query failures: a lost or refused connection is `Unavailable` (worth a retry), anything else internal.
/// The detail goes to the logs only.
impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        let code = match &e {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Tls(_) => {
                ErrorCode::Unavailable
            }
            _ => ErrorCode::Internal,
        };
        Error::new(code, format!("query failed: {e}"))
    }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        to_status(&err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_keeps_the_field_name() {
        let status = tonic::Status::from(Error::invalid("identifiers[0].value", "must not be empty"));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "identifiers[0].value: must not be empty");
    }

    #[test]
    fn internal_detail_never_reaches_the_caller() {
        let status = tonic::Status::from(Error::internal("syntax error near SELECT at /var/lib/x.db"));
        assert_eq!(status.code(), tonic::Code::Internal);
        assert_eq!(status.message(), "internal error");
        let status = tonic::Status::from(Error::unavailable("connection refused 10.0.0.1"));
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(!status.message().contains("10.0.0.1"));
    }
}
