//! HTTP proxying by metadata query (`POST /api/v1/proxy`, contract §9).
//!
//! # Layout
//!
//! - [`spec`]: the caller's request, parsed and checked (method, route,
//!   query, body rule, headers). Pure.
//! - [`target`]: a client's `ip` as an upstream address. Pure.
//! - [`headers`]: hop-by-hop headers, dropped both ways. Pure.
//! - [`io`]: glommio sockets (plain or rustls) as hyper's I/O traits.
//! - [`pool`]: opening upstream connections and keeping idle ones, per
//!   shard.
//! - [`relay`]: the upstream's answer written back, streamed when large.
//! - [`error`]: every failure with its status and wire text.
//!
//! The target is chosen exactly as SEND chooses ([`router::pick_described`]: same
//! query engine, shards and `key` hashing), with restricted clients left
//! out; its address comes back with the chosen shard's pick
//! ([`router::pick_described`]).

pub mod error;
pub mod headers;
pub mod io;
pub mod pool;
pub mod relay;
pub mod spec;
pub mod target;

use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HOST, HeaderName, HeaderValue};

use crate::config::Config;
use crate::routing::router;
use crate::shard::Shard;
pub use error::{ProxyError, SpecError};
use pool::{Sender, until};
use relay::Limits;
pub use relay::Relay;
use spec::ProxySpec;
use target::Target;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Handles one proxy request body from `caller`: routes it, sends it
/// upstream, and returns the upstream's answer ready to relay.
pub async fn forward(shard: &Rc<Shard>, body: &[u8], caller: IpAddr) -> Result<Relay, ProxyError> {
    let ProxySpec {
        method,
        route,
        query,
        body,
        mut headers,
    } = ProxySpec::parse(body).map_err(ProxyError::Spec)?;
    let (client, ip, target) = pick_target(shard, query).await?;
    let bad_address = |reason: String| ProxyError::BadAddress {
        client: client.clone(),
        ip: ip.clone(),
        reason,
    };
    let path = target.path(&route).map_err(bad_address)?;
    if !headers.contains_key(HOST) {
        let host = HeaderValue::from_str(&target.authority())
            .map_err(|_| bad_address("not a valid Host header".into()))?;
        headers.insert(HOST, host);
    }
    let forwarded = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(earlier) => format!("{earlier}, {caller}"),
        None => caller.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&forwarded) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    let mut request = hyper::Request::new(Full::new(body));
    *request.method_mut() = method.clone();
    *request.uri_mut() = path.into();
    *request.headers_mut() = headers;

    let config = &shard.config;
    let limits = Limits {
        deadline: Instant::now() + config.proxy_timeout,
        timeout: config.proxy_timeout,
        max_body: config.proxy_max_body,
        pool_size: config.proxy_pool_size,
    };
    let upstream = target.to_string();
    let deadline = limits.deadline;
    let exchange = async {
        let (response, sender) = send(&target, request, config).await?;
        let conn = (target.pool_key(), sender);
        Relay::prepare(upstream.clone(), &method, response, conn, limits).await
    };
    until(deadline, exchange)
        .await
        .unwrap_or(Err(ProxyError::Timeout {
            upstream,
            after: config.proxy_timeout,
        }))
}

/// The client a SEND with `query` would reach, as (client id, its `ip`,
/// the address parsed). Restricted clients never match (their `ip` is null).
async fn pick_target(
    shard: &Shard,
    mut query: crate::query::Query,
) -> Result<(String, String, Target), ProxyError> {
    query.restricted = false;
    // The chosen client's shard describes it along with its pick, so its
    // address comes back without another round trip.
    let node = router::pick_described(shard, Arc::new(query))
        .await
        .ok_or(ProxyError::NoRoute)?;
    let id = node["client_id"].as_str().unwrap_or_default().to_string();
    let ip = node["metadata"]["ip"]
        .as_str()
        .ok_or(ProxyError::NoRoute)?
        .to_string();
    match Target::parse(&ip) {
        Ok(target) => Ok((id, ip, target)),
        Err(reason) => Err(ProxyError::BadAddress {
            client: id,
            ip,
            reason,
        }),
    }
}

/// Sends `request` on an idle pooled connection, or a new one. A request
/// that a pooled connection could not even start (the upstream closed it
/// while idle) is retried once on a new connection; nothing was sent, so
/// this is safe for every method.
async fn send(
    target: &Target,
    mut request: hyper::Request<Full<bytes::Bytes>>,
    config: &Config,
) -> Result<(hyper::Response<Incoming>, Sender), ProxyError> {
    let key = target.pool_key();
    loop {
        let (mut sender, reused) = match pool::take(&key) {
            Some(sender) => (sender, true),
            None => {
                let fresh = pool::connect(
                    target,
                    config.proxy_connect_timeout,
                    config.proxy_ca_file.as_deref(),
                )
                .await?;
                (fresh, false)
            }
        };
        // A pooled connection may still be finishing its last exchange (its
        // driver task has not run since), or have been closed while idle.
        if reused && sender.ready().await.is_err() {
            continue;
        }
        match sender.try_send_request(request).await {
            Ok(response) => return Ok((response, sender)),
            Err(mut e) => match e.take_message() {
                Some(unsent) if reused => request = unsent,
                _ => {
                    return Err(ProxyError::Upstream {
                        upstream: target.to_string(),
                        reason: error_chain(e.error()),
                    });
                }
            },
        }
    }
}

/// An error with its causes, for messages: hyper's own text is often just
/// "connection error" with the useful part in its source.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
