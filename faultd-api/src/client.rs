//! How clients reach faultd: the Unix socket of their network namespace when it is there,
//! loopback TCP otherwise, or the address they name (`unix:/path`, `host:port`), with TLS
//! when they bring certificates.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::default_socket_path;

/// Certificates for a TLS connection to a remote faultd (`faultd --allow-remote`).
#[derive(Clone, Debug, Default)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct ClientTlsArgs {
    /// CA certificate (PEM) that signed faultd's server certificate; turns TLS on.
    #[cfg_attr(
        feature = "clap",
        arg(
            long = "tls-ca",
            global = true,
            value_name = "PEM",
            env = "FAULTD_TLS_CA"
        )
    )]
    pub ca: Option<PathBuf>,
    /// This client's certificate (PEM), signed by the CA faultd trusts (--tls-client-ca).
    #[cfg_attr(
        feature = "clap",
        arg(
            long = "tls-cert",
            global = true,
            value_name = "PEM",
            env = "FAULTD_TLS_CERT",
            requires = "key"
        )
    )]
    pub cert: Option<PathBuf>,
    /// This client's private key (PEM).
    #[cfg_attr(
        feature = "clap",
        arg(
            long = "tls-key",
            global = true,
            value_name = "PEM",
            env = "FAULTD_TLS_KEY",
            requires = "cert"
        )
    )]
    pub key: Option<PathBuf>,
}

impl ClientTlsArgs {
    fn config(&self) -> anyhow::Result<Option<ClientTlsConfig>> {
        let Some(ca) = &self.ca else {
            if self.cert.is_some() {
                anyhow::bail!(
                    "--tls-cert needs --tls-ca (the CA that signed faultd's certificate)"
                );
            }
            return Ok(None);
        };
        let mut config =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca, "--tls-ca")?));
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            config = config.identity(Identity::from_pem(
                read(cert, "--tls-cert")?,
                read(key, "--tls-key")?,
            ));
        }
        Ok(Some(config))
    }
}

fn read(path: &Path, flag: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{flag} {}", path.display()))
}

/// Where to reach faultd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Unix(PathBuf),
    /// `host:port`, or a URL (`http://`, `https://`).
    Tcp(String),
}

impl Target {
    /// `unix:/path` or `unix:///path` is a socket; anything else a TCP address.
    pub fn parse(addr: &str) -> Self {
        match addr
            .strip_prefix("unix://")
            .or_else(|| addr.strip_prefix("unix:"))
        {
            Some(path) => Target::Unix(PathBuf::from(path)),
            None => Target::Tcp(addr.to_string()),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Unix(path) => write!(f, "unix:{}", path.display()),
            Target::Tcp(addr) => f.write_str(addr),
        }
    }
}

/// Connects to faultd: at `addr` when given; otherwise at the socket of this network
/// namespace if there is one and it lets us in, else at loopback TCP (where faultd still
/// identifies us, through the kernel).
pub async fn connect(addr: Option<&str>, tls: &ClientTlsArgs) -> anyhow::Result<Channel> {
    let tls = tls.config()?;
    if let Some(addr) = addr {
        return connect_to(&Target::parse(addr), tls).await;
    }
    if tls.is_none()
        && let Ok(path) = default_socket_path()
        && path.exists()
    {
        match connect_to(&Target::Unix(path), None).await {
            Ok(channel) => return Ok(channel),
            // Not let in by the socket's mode (--allow-uid users not in its group), or
            // left by a faultd that died: TCP may still answer.
            Err(e) if socket_refused(&e) => {}
            Err(e) => return Err(e),
        }
    }
    connect_to(&Target::Tcp(crate::DEFAULT_LISTEN.to_string()), tls).await
}

async fn connect_to(target: &Target, tls: Option<ClientTlsConfig>) -> anyhow::Result<Channel> {
    let endpoint = match target {
        // The authority is not used on a socket; tonic wants one all the same.
        Target::Unix(path) => Endpoint::from_shared(format!("unix:{}", path.display()))?,
        Target::Tcp(addr) => {
            let uri = match (addr.contains("://"), &tls) {
                (true, _) => addr.clone(),
                (false, Some(_)) => format!("https://{addr}"),
                (false, None) => format!("http://{addr}"),
            };
            let endpoint = Endpoint::from_shared(uri)
                .with_context(|| format!("--addr {addr:?} is not an address"))?;
            match tls {
                Some(tls) => endpoint
                    .tls_config(tls)
                    .context("--tls-ca, --tls-cert, --tls-key")?,
                None => endpoint,
            }
        }
    };
    endpoint
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|e| ConnectError {
            target: target.clone(),
            kind: io_kind(&e),
            detail: error_chain(&e),
        })
        .map_err(anyhow::Error::from)
}

/// A connection that failed, in words that say what to do: faultd is unreachable (as
/// opposed to a mistake in what the client was asked to do, which fails differently).
#[derive(Debug, thiserror::Error)]
#[error("{}", self.explain())]
pub struct ConnectError {
    target: Target,
    kind: Option<io::ErrorKind>,
    detail: String,
}

impl ConnectError {
    fn explain(&self) -> String {
        match (&self.target, self.kind) {
            (Target::Unix(path), Some(io::ErrorKind::PermissionDenied)) => format!(
                "faultd's socket {} does not let this user in (mode 0660); ask whoever runs \
                 faultd to admit you (--allow-uid, --allow-group), or use TCP: --addr {}",
                path.display(),
                crate::DEFAULT_LISTEN
            ),
            (target, Some(io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound) | None) => {
                format!(
                    "no faultd answers at {target}; start one with `cargo xtask run -- --iface \
                     lo` (or `faultd --iface lo` as root), or point --addr / FAULTD_ADDR at it"
                )
            }
            (target, Some(_)) => format!("cannot reach faultd at {target}: {}", self.detail),
        }
    }
}

fn socket_refused(e: &anyhow::Error) -> bool {
    e.downcast_ref::<ConnectError>().is_some_and(|e| {
        matches!(
            e.kind,
            Some(io::ErrorKind::PermissionDenied | io::ErrorKind::ConnectionRefused)
        )
    })
}

/// The kind of the I/O error under a transport error, if it is one.
fn io_kind(e: &(dyn std::error::Error + 'static)) -> Option<io::ErrorKind> {
    let mut source = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return Some(io.kind());
        }
        source = err.source();
    }
    None
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(err) = source {
        parts.push(err.to_string());
        source = err.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_name_a_socket_or_tcp() {
        assert_eq!(
            Target::parse("unix:/run/faultd/x.sock"),
            Target::Unix("/run/faultd/x.sock".into())
        );
        assert_eq!(
            Target::parse("unix:///tmp/f.sock"),
            Target::Unix("/tmp/f.sock".into())
        );
        assert_eq!(
            Target::parse("127.0.0.1:7447"),
            Target::Tcp("127.0.0.1:7447".into())
        );
        assert_eq!(
            Target::parse("https://[fd00::1]:7447"),
            Target::Tcp("https://[fd00::1]:7447".into())
        );
    }

    #[tokio::test]
    async fn tls_files_without_a_ca_are_the_callers_mistake() {
        let tls = ClientTlsArgs {
            ca: None,
            cert: Some("me.pem".into()),
            key: Some("me.key".into()),
        };
        let err = connect(Some("127.0.0.1:1"), &tls).await.unwrap_err();
        assert!(err.downcast_ref::<ConnectError>().is_none(), "{err:#}");
        assert!(
            err.to_string().contains("--tls-cert needs --tls-ca"),
            "{err:#}"
        );
    }

    #[tokio::test]
    async fn a_missing_socket_says_no_faultd_answers() {
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("unix:{}", dir.path().join("none.sock").display());
        let err = connect(Some(&addr), &ClientTlsArgs::default())
            .await
            .unwrap_err();
        // Typed, so that a client tells "unreachable" from its own mistakes (faultctl's exit 2).
        assert!(err.downcast_ref::<ConnectError>().is_some(), "{err:#}");
        let err = err.to_string();
        assert!(
            err.starts_with(&format!("no faultd answers at {addr}")),
            "{err}"
        );
    }
}
