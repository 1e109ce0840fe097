//! Everything that can go wrong with a proxied call, with its HTTP status
//! and the exact text the caller reads in `{"errors": [...]}` (contract §9).

use std::time::Duration;

use serde_json::json;

use crate::http::response::Response;

/// A fault of the proxy request itself: answered 400, all of them at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("invalid JSON body: {0}")]
    Json(String),
    #[error("the body must be a JSON object")]
    NotObject,
    #[error("missing field {0}")]
    Missing(&'static str),
    #[error("invalid field {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("method {0} is not allowed: use one of GET HEAD POST PUT DELETE PATCH")]
    Method(String),
    #[error("method {0} needs a body")]
    BodyRequired(&'static str),
    #[error("method {0} must not have a body")]
    BodyForbidden(&'static str),
    #[error("invalid query: {0}")]
    Query(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// 400: the request's own faults.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Spec(Vec<SpecError>),
    /// 400: nothing (unrestricted, still connected) matches the query.
    #[error("no matching client")]
    NoRoute,
    /// 502: the chosen client's `ip` cannot be used as an address.
    #[error("client {client} has no usable address {ip:?}: {reason}")]
    BadAddress {
        client: String,
        ip: String,
        reason: String,
    },
    /// 502: the upstream cannot be reached (refused, unresolvable, TLS).
    #[error("upstream {upstream} unreachable: {reason}")]
    Connect { upstream: String, reason: String },
    /// 502: the upstream broke the exchange (closed, malformed reply).
    #[error("upstream {upstream} failed: {reason}")]
    Upstream { upstream: String, reason: String },
    /// 502: the upstream's body is larger than `proxy_max_body`.
    #[error("upstream {upstream} response body larger than {limit} bytes")]
    TooLarge { upstream: String, limit: usize },
    /// 504: no connection within `proxy_connect_timeout`.
    #[error("upstream {upstream} timed out: no connection within {after:?}")]
    ConnectTimeout { upstream: String, after: Duration },
    /// 504: no complete answer within `proxy_timeout`.
    #[error("upstream {upstream} timed out: no complete response within {after:?}")]
    Timeout { upstream: String, after: Duration },
}

impl ProxyError {
    pub fn status(&self) -> u16 {
        match self {
            ProxyError::Spec(_) | ProxyError::NoRoute => 400,
            ProxyError::BadAddress { .. }
            | ProxyError::Connect { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::TooLarge { .. } => 502,
            ProxyError::ConnectTimeout { .. } | ProxyError::Timeout { .. } => 504,
        }
    }

    /// The caller's answer: the status and `{"errors": [<message>...]}`.
    pub fn response(&self) -> Response {
        let errors: Vec<String> = match self {
            ProxyError::Spec(all) => all.iter().map(ToString::to_string).collect(),
            other => vec![other.to_string()],
        };
        Response::json(self.status(), &json!({ "errors": errors }))
    }
}
