//! Consent over gRPC and HTTP (written with the consent service).
