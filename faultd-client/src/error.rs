//! What can go wrong, by what the caller does about it: the daemon's gRPC status codes
//! mapped once, here, to variants.

use tonic::Code;

/// An error of a faultd call.
///
/// faultd validates every request itself and names the offending field in its message
/// (`target.peer: prefix /33 is out of range…`); this client does not validate again, so
/// an [`Error::InvalidArgument`] always carries the daemon's own words.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is wrong (`INVALID_ARGUMENT`); the message starts with the field.
    #[error("invalid argument: {message}")]
    InvalidArgument { message: String },
    /// No fault has that id (`NOT_FOUND`): removed already, or expired.
    #[error("not found: {message}")]
    NotFound { message: String },
    /// faultd will not do it in its present state (`FAILED_PRECONDITION`): a fault on its
    /// own API port, an action this kernel lacks (delay without `sch_fq`), an ended session.
    #[error("refused: {message}")]
    Refused { message: String },
    /// A limit is reached (`RESOURCE_EXHAUSTED`): 8 faults on a port, `--max-faults`.
    #[error("exhausted: {message}")]
    Exhausted { message: String },
    /// This caller may not steer faultd (`PERMISSION_DENIED`, `UNAUTHENTICATED`); the message
    /// says how to be let in.
    #[error("permission denied: {message}")]
    PermissionDenied { message: String },
    /// faultd shuts down, or the connection broke (`UNAVAILABLE`).
    #[error("unavailable: {message}")]
    Unavailable { message: String },
    /// No faultd answers at the address, or the connection could not be made.
    #[error("{message}")]
    Transport { message: String },
    /// The client's own configuration is wrong (TLS files, say); nothing was sent.
    #[error("{message}")]
    Config { message: String },
    /// Any other status.
    #[error("{code:?}: {message}")]
    Other { code: Code, message: String },
}

impl Error {
    /// The request field an [`Error::InvalidArgument`] names (`target.port`, `ttl_ms`…).
    pub fn field(&self) -> Option<&str> {
        match self {
            Error::InvalidArgument { message } => message
                .split_once(':')
                .map(|(field, _)| field)
                .filter(|field| !field.contains(' ')),
            _ => None,
        }
    }

    /// A failed connection, from `faultd_api::client::connect`.
    pub(crate) fn connect(e: anyhow::Error) -> Self {
        let message = format!("{e:#}");
        if e.downcast_ref::<faultd_api::client::ConnectError>()
            .is_some()
        {
            Error::Transport { message }
        } else {
            Error::Config { message }
        }
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        let message = status.message().to_string();
        match status.code() {
            Code::InvalidArgument => Error::InvalidArgument { message },
            Code::NotFound => Error::NotFound { message },
            Code::FailedPrecondition => Error::Refused { message },
            Code::ResourceExhausted => Error::Exhausted { message },
            Code::PermissionDenied | Code::Unauthenticated => Error::PermissionDenied { message },
            Code::Unavailable => Error::Unavailable { message },
            code => Error::Other { code, message },
        }
    }
}

/// What faultd-client's calls return.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Status;

    #[test]
    fn status_codes_map_to_what_the_caller_does_about_them() {
        let cases = [
            (
                Status::invalid_argument("target.port: 0 is not a port"),
                "InvalidArgument",
            ),
            (Status::not_found("no fault 7"), "NotFound"),
            (
                Status::failed_precondition("session_id: 9 is not open"),
                "Refused",
            ),
            (
                Status::resource_exhausted("8 faults on port 80"),
                "Exhausted",
            ),
            (
                Status::permission_denied("uid 1001 may not"),
                "PermissionDenied",
            ),
            (
                Status::unauthenticated("no certificate"),
                "PermissionDenied",
            ),
            (Status::unavailable("shutting down"), "Unavailable"),
            (Status::internal("oops"), "Other"),
        ];
        for (status, variant) in cases {
            let message = status.message().to_string();
            let error = Error::from(status);
            let debug = format!("{error:?}");
            assert!(debug.starts_with(variant), "{debug} is not {variant}");
            assert!(error.to_string().ends_with(&message), "{error}");
        }
    }

    #[test]
    fn an_invalid_argument_names_its_field() {
        let error = Error::from(Status::invalid_argument(
            "target.peer: prefix /33 is out of range",
        ));
        assert_eq!(error.field(), Some("target.peer"));
        assert!(matches!(
            &error,
            Error::InvalidArgument { message } if message == "target.peer: prefix /33 is out of range"
        ));
        let unnamed = Error::from(Status::invalid_argument("something is wrong: here"));
        assert_eq!(unnamed.field(), None);
        assert_eq!(Error::from(Status::not_found("x: y")).field(), None);
    }

    #[test]
    fn a_missing_daemon_is_a_transport_error_and_bad_tls_a_config_one() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let tls = faultd_api::client::ClientTlsArgs::default();
        let err = rt
            .block_on(faultd_api::client::connect(
                Some("unix:/nonexistent/faultd-client-test.sock"),
                &tls,
            ))
            .unwrap_err();
        let err = Error::connect(err);
        assert!(matches!(err, Error::Transport { .. }), "{err:?}");
        assert!(err.to_string().contains("no faultd answers"), "{err}");

        let tls = faultd_api::client::ClientTlsArgs {
            ca: None,
            cert: Some("me.pem".into()),
            key: Some("me.key".into()),
        };
        let err = rt
            .block_on(faultd_api::client::connect(Some("127.0.0.1:1"), &tls))
            .unwrap_err();
        assert!(matches!(Error::connect(err), Error::Config { .. }));
    }
}
