//! The HTTP API (contract §9): version, query, proxy, redirect, errors.

use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;

use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::http::request::Request;
use crate::http::response::Response;
use crate::proxy;
use crate::query::Query;
use crate::routing::router;
use crate::shard::{Reply, Shard, ShardMsg};

/// What the API answers: a response built in memory, or an upstream's
/// answer relayed as it arrives (the proxy, whose bodies may be large).
pub enum Answer {
    Response(Response),
    Relay(Box<proxy::Relay>),
}

/// Answers one request from `caller`: `POST /api/v1/proxy` here, every
/// other route through [`handle`].
pub async fn answer(shard: &Rc<Shard>, req: &Request, caller: IpAddr) -> Answer {
    if (req.method.as_str(), req.path.as_str()) == ("POST", "/api/v1/proxy") {
        return match authorize(shard, req) {
            Err(denied) => Answer::Response(denied),
            Ok(()) => match proxy::forward(shard, &req.body, caller).await {
                Ok(relay) => Answer::Relay(Box::new(relay)),
                Err(e) => Answer::Response(e.response()),
            },
        };
    }
    Answer::Response(handle(shard, req).await)
}

/// Every route whose answer is built in memory (all but the proxy, which
/// [`answer`] takes first).
pub async fn handle(shard: &Rc<Shard>, req: &Request) -> Response {
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/api/version") => Response::json(
            200,
            &json!({"api": "v1", "singyeong": env!("CARGO_PKG_VERSION")}),
        ),
        ("POST", "/api/v1/query") => match authorize(shard, req) {
            Err(denied) => denied,
            Ok(()) => query(shard, req).await,
        },
        ("GET", "/api/v1/queues") => match authorize(shard, req) {
            Err(denied) => denied,
            Ok(()) => Response::json(200, &crate::queue::stats(shard).await),
        },
        ("GET", "/api/v1/cluster") => match authorize(shard, req) {
            Err(denied) => denied,
            Ok(()) => Response::json(200, &cluster(shard).await),
        },
        ("GET", "/metrics") => match authorize(shard, req) {
            Err(denied) => denied,
            Ok(()) => metrics(shard).await,
        },
        ("GET" | "HEAD", "/") => Response::json(302, &json!({"location": "/gateway/websocket"}))
            .with_header("location", "/gateway/websocket"),
        (_, "/api/version" | "/" | "/metrics" | "/api/v1/queues" | "/api/v1/cluster") => {
            method_not_allowed("GET")
        }
        (_, "/api/v1/query" | "/api/v1/proxy") => method_not_allowed("POST"),
        _ => not_found(),
    }
}

pub fn not_found() -> Response {
    Response::json(404, &json!({"code": 404, "error": "not found"}))
}

fn method_not_allowed(allow: &'static str) -> Response {
    Response::json(405, &json!({"code": 405, "error": "method not allowed"}))
        .with_header("allow", allow)
}

/// `Authorization: <password>` when a password is configured, compared in
/// constant time.
fn authorize(shard: &Shard, req: &Request) -> Result<(), Response> {
    let Some(password) = &shard.config.auth else {
        return Ok(());
    };
    let given = req.header("authorization").unwrap_or("");
    if bool::from(given.as_bytes().ct_eq(password.as_bytes())) {
        Ok(())
    } else {
        Err(Response::json(
            401,
            &json!({"status": "error", "error": "not authorized"}),
        ))
    }
}

/// `GET /api/v1/cluster`: the members as this node knows them, with the
/// links every shard has to each.
async fn cluster(shard: &Rc<Shard>) -> Value {
    let view = shard.cluster.view();
    if view.this.is_none() {
        return view.to_json();
    }
    let links: Vec<_> = shard
        .scatter(|reply_to| ShardMsg::Links { reply_to })
        .await
        .into_iter()
        .enumerate()
        .flat_map(|(from, reply)| match reply {
            Reply::Links(links) => links.into_iter().map(|l| (from, l)).collect(),
            _ => Vec::new(),
        })
        .collect();
    crate::cluster::describe(&view, &links, &shard.cluster.remote_apps())
}

/// `GET /metrics`: every shard's counters, gathered now.
async fn metrics(shard: &Rc<Shard>) -> Response {
    let snapshots: Vec<_> = shard
        .scatter(|reply_to| ShardMsg::Metrics { reply_to })
        .await
        .into_iter()
        .filter_map(|r| match r {
            Reply::Metrics(snapshot) => Some(*snapshot),
            _ => None,
        })
        .collect();
    Response {
        status: 200,
        headers: vec![(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8".into(),
        )],
        body: crate::metrics::render(&snapshots, shard.config.metrics_max_queues).into_bytes(),
    }
}

async fn query(shard: &Rc<Shard>, req: &Request) -> Response {
    let body: Value = match serde_json::from_slice(&req.body) {
        Ok(v) => v,
        Err(e) => {
            return Response::json(400, &json!({"errors": [format!("invalid JSON body: {e}")]}));
        }
    };
    let query = match Query::parse(&body) {
        Ok(query) => query,
        Err(e) => {
            return Response::json(400, &json!({"errors": [format!("invalid query: {e}")]}));
        }
    };
    let found = router::nodes(shard, Arc::new(query)).await;
    let truncated = found.truncated();
    let response = Response::json(200, &Value::Array(found.nodes));
    if !truncated {
        return response;
    }
    // The body stays the contract's array; the cut is said in headers.
    response
        .with_header(TRUNCATED_HEADER, "true")
        .with_header(TOTAL_HEADER, found.matched.to_string())
}

/// On a `POST /api/v1/query` answer cut by `--max-query-results` (or the
/// answer's byte budget): `true`.
pub const TRUNCATED_HEADER: &str = "x-singyeong-truncated";
/// With [`TRUNCATED_HEADER`]: how many clients matched in all.
pub const TOTAL_HEADER: &str = "x-singyeong-total";
