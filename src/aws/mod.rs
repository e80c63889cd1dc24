//! AWS: the calls the sidecar makes to AWS services and the credentials it signs them with,
//! shared by the token service (key sources) and export (SigV4-signed OTLP, exporter headers
//! from a secret).
//!
//! `client.rs` is the JSON 1.1 client (Secrets Manager, SSM, KMS) and the one place a
//! request is signed with SigV4, by the `aws-sigv4` crate ([`sign_request`]);
//! `credentials.rs` gives it the credentials: the access-key variables, or (SnapStart, which
//! has none) the container credentials endpoint, fetched and cached until 5 minutes before
//! they expire; `secrets.rs` reads a secret's text and version from Secrets Manager or SSM,
//! with the typed errors both of its users report; `answer.rs` reads an answer's body under
//! a bound.
//!
//! Never: logs or returns a credential or a secret's value in an error; follows a redirect;
//! waits without a bound.

mod answer;
mod client;
pub mod credentials;
pub mod secrets;

pub use client::{AwsClient, AwsError, SignError, sign_request, tls_config};
pub use credentials::{CredentialProvider, Credentials, CredentialsError};
pub use secrets::{Fetched, SourceError, SourceErrorKind, fetch};
