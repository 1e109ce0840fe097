//! Upstream connections: opening them (TCP, then TLS for `https://`
//! targets, then hyper's HTTP/1.1 handshake) and keeping idle ones for
//! reuse. One pool per shard: it is thread-local, and a shard is one
//! executor thread, so no lock is shared between cores and a connection
//! never moves between them.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_rustls::TlsConnector;
use futures_rustls::rustls::pki_types::ServerName;
use futures_rustls::rustls::{ClientConfig, RootCertStore};
use glommio::net::TcpStream;
use http_body_util::Full;
use hyper::client::conn::http1;

use crate::proxy::error::ProxyError;
use crate::proxy::io::{HyperIo, Upstream};
use crate::proxy::target::{PoolKey, Target};

/// The sending half of one upstream HTTP/1.1 connection.
pub type Sender = http1::SendRequest<Full<Bytes>>;

thread_local! {
    static IDLE: RefCell<HashMap<PoolKey, Vec<Sender>>> = RefCell::new(HashMap::new());
    static TLS: RefCell<Option<Arc<ClientConfig>>> = const { RefCell::new(None) };
}

/// An idle connection to `key` that is still open, if the pool has one
/// (the most recently used: the least likely to have been closed).
pub fn take(key: &PoolKey) -> Option<Sender> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.get_mut(key)?;
        let found = std::iter::from_fn(|| list.pop()).find(|s| !s.is_closed());
        if list.is_empty() {
            idle.remove(key);
        }
        found
    })
}

/// Gives a connection whose last exchange completed back to the pool,
/// keeping at most `max` idle per upstream (the rest are closed).
pub fn put(key: PoolKey, sender: Sender, max: usize) {
    if max == 0 || sender.is_closed() {
        return;
    }
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.entry(key).or_default();
        list.retain(|s| !s.is_closed());
        if list.len() < max {
            list.push(sender);
        }
    });
}

/// Runs `fut` until `deadline`; `None` if the deadline passed first.
pub async fn until<T>(deadline: Instant, fut: impl Future<Output = T>) -> Option<T> {
    let left = deadline.saturating_duration_since(Instant::now());
    futures_lite::future::or(async { Some(fut.await) }, async {
        glommio::timer::sleep(left).await;
        None
    })
    .await
}

/// Opens a connection to `target` within `timeout` (resolution, TCP, TLS
/// and the HTTP/1.1 handshake together) and starts its driver task.
pub async fn connect(
    target: &Target,
    timeout: Duration,
    ca_file: Option<&std::path::Path>,
) -> Result<Sender, ProxyError> {
    let unreachable = |reason: String| ProxyError::Connect {
        upstream: target.to_string(),
        reason,
    };
    let timed_out = || ProxyError::ConnectTimeout {
        upstream: target.to_string(),
        after: timeout,
    };
    let open = async {
        let addr = resolve(&target.host, target.port)
            .await
            .map_err(|e| unreachable(format!("cannot resolve {}: {e}", target.host)))?;
        let tcp = TcpStream::connect_timeout(addr, timeout)
            .await
            .map_err(|e| match std::io::Error::from(e) {
                e if e.kind() == std::io::ErrorKind::TimedOut => timed_out(),
                e => unreachable(format!("connect to {addr}: {e}")),
            })?;
        let _ = tcp.set_nodelay(true);
        let io = match target.tls {
            false => Upstream::Plain(tcp),
            true => {
                let config = tls_config(ca_file).map_err(unreachable)?;
                let name = ServerName::try_from(target.host.clone())
                    .map_err(|e| unreachable(format!("invalid TLS server name: {e}")))?;
                let tls = TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| unreachable(format!("TLS handshake: {e}")))?;
                Upstream::Tls(Box::new(tls))
            }
        };
        let (sender, conn) = http1::Builder::new()
            .handshake(HyperIo(io))
            .await
            .map_err(|e| unreachable(format!("HTTP handshake: {e}")))?;
        glommio::spawn_local(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        })
        .detach();
        Ok(sender)
    };
    until(Instant::now() + timeout, open)
        .await
        .unwrap_or_else(|| Err(timed_out()))
}

/// An IP literal directly; a name on glommio's blocking thread, because
/// `getaddrinfo` blocks and must not stall the shard.
async fn resolve(host: &str, port: u16) -> std::io::Result<SocketAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let host = host.to_string();
    glommio::executor()
        .spawn_blocking(move || {
            (host.as_str(), port)
                .to_socket_addrs()?
                .next()
                .ok_or_else(|| std::io::Error::other("no address found"))
        })
        .await
}

/// The shard's TLS client settings, built on first use: the Mozilla roots
/// of webpki-roots, plus the certificates of `ca_file` when one is set.
fn tls_config(ca_file: Option<&std::path::Path>) -> Result<Arc<ClientConfig>, String> {
    if let Some(config) = TLS.with(|t| t.borrow().clone()) {
        return Ok(config);
    }
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        use futures_rustls::rustls::pki_types::CertificateDer;
        use futures_rustls::rustls::pki_types::pem::PemObject;
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("invalid PEM in {}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("invalid certificate in {}: {e}", path.display()))?;
        }
    }
    let provider = Arc::new(futures_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS settings: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let config = Arc::new(config);
    TLS.with(|t| *t.borrow_mut() = Some(config.clone()));
    Ok(config)
}
