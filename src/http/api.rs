//! The HTTP API (contract §9): version, query, redirect, errors.

use std::rc::Rc;
use std::sync::Arc;

use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::http::request::Request;
use crate::http::response::Response;
use crate::query::Query;
use crate::routing::router;
use crate::shard::{Reply, Shard, ShardMsg};

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
        ("POST", "/api/v1/proxy") => match authorize(shard, req) {
            Err(denied) => denied,
            Ok(()) => Response::json(
                501,
                &json!({"errors": ["proxying is not available on this server yet"]}),
            ),
        },
        ("GET", "/metrics") => match authorize(shard, req) {
            Err(denied) => denied,
            Ok(()) => metrics(shard).await,
        },
        ("GET" | "HEAD", "/") => Response::json(302, &json!({"location": "/gateway/websocket"}))
            .with_header("location", "/gateway/websocket"),
        (_, "/api/version" | "/" | "/metrics") => method_not_allowed("GET"),
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
        body: crate::metrics::render(&snapshots).into_bytes(),
    }
}

async fn query(shard: &Rc<Shard>, req: &Request) -> Response {
    let body: Value = match serde_json::from_slice(&req.body) {
        Ok(v) => v,
        Err(e) => {
            return Response::json(400, &json!({"errors": [format!("invalid JSON body: {e}")]}));
        }
    };
    match Query::parse(&body) {
        Ok(query) => Response::json(
            200,
            &Value::Array(router::nodes(shard, Arc::new(query)).await),
        ),
        Err(e) => Response::json(400, &json!({"errors": [format!("invalid query: {e}")]})),
    }
}
