//! What the caller of `POST /api/v1/proxy` asks for (contract §9), parsed
//! and checked before anything is routed: `{"method", "route", "query",
//! "body"?, "headers"?}`. Pure: no I/O.

use bytes::Bytes;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderName, HeaderValue};
use hyper::http::uri::PathAndQuery;
use hyper::{HeaderMap, Method};
use serde_json::{Map, Value};

use crate::proxy::error::SpecError;
use crate::proxy::headers::strip_hop_by_hop;
use crate::query::Query;

/// A checked proxy request.
#[derive(Debug)]
pub struct ProxySpec {
    pub method: Method,
    /// Path and query string, always starting with `/`.
    pub route: PathAndQuery,
    /// Who receives it; `restricted` is forced false (restricted clients
    /// have no address and are never proxy targets).
    pub query: Query,
    /// The request body: a string as is, any other JSON value encoded.
    pub body: Bytes,
    /// The caller's headers, minus hop-by-hop ones and Content-Length
    /// (the proxy frames the body itself). Content-Type defaults to
    /// `application/json` for a JSON-encoded body.
    pub headers: HeaderMap,
}

impl ProxySpec {
    /// Parses the API request body; every fault found is reported.
    pub fn parse(json: &[u8]) -> Result<ProxySpec, Vec<SpecError>> {
        let value: Value =
            serde_json::from_slice(json).map_err(|e| vec![SpecError::Json(e.to_string())])?;
        let Value::Object(obj) = value else {
            return Err(vec![SpecError::NotObject]);
        };
        let mut errors = Vec::new();
        let method = method(&obj).map_err(|e| errors.push(e)).ok();
        let route = route(&obj).map_err(|e| errors.push(e)).ok();
        let query = query(&obj).map_err(|e| errors.push(e)).ok();
        let headers = headers(&obj).map_err(|e| errors.push(e)).ok();
        let body = match &method {
            Some(m) => body(&obj, m).map_err(|e| errors.push(e)).ok(),
            None => None,
        };
        match (method, route, query, headers, body) {
            (Some(method), Some(route), Some(query), Some(mut headers), Some((body, json)))
                if errors.is_empty() =>
            {
                if json && !headers.contains_key(CONTENT_TYPE) {
                    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                }
                Ok(ProxySpec {
                    method,
                    route,
                    query,
                    body,
                    headers,
                })
            }
            _ => Err(errors),
        }
    }
}

fn method(obj: &Map<String, Value>) -> Result<Method, SpecError> {
    let name = match obj.get("method") {
        None | Some(Value::Null) => return Err(SpecError::Missing("method")),
        Some(Value::String(s)) => s.to_ascii_uppercase(),
        Some(other) => return Err(SpecError::Method(other.to_string())),
    };
    Ok(match name.as_str() {
        "GET" => Method::GET,
        "HEAD" => Method::HEAD,
        "POST" => Method::POST,
        "PUT" => Method::PUT,
        "DELETE" => Method::DELETE,
        "PATCH" => Method::PATCH,
        _ => return Err(SpecError::Method(name)),
    })
}

fn route(obj: &Map<String, Value>) -> Result<PathAndQuery, SpecError> {
    let invalid = |reason: &str| SpecError::Invalid {
        field: "route",
        reason: reason.into(),
    };
    let route = match obj.get("route") {
        None | Some(Value::Null) => return Err(SpecError::Missing("route")),
        Some(Value::String(s)) => s,
        Some(_) => return Err(invalid("must be a string")),
    };
    if route.contains('#') {
        return Err(invalid("must not contain a fragment (#)"));
    }
    let route = match route.starts_with('/') {
        true => route.clone(),
        false => format!("/{route}"),
    };
    PathAndQuery::try_from(route.as_str()).map_err(|_| invalid("not a valid path and query string"))
}

fn query(obj: &Map<String, Value>) -> Result<Query, SpecError> {
    let value = match obj.get("query") {
        None | Some(Value::Null) => return Err(SpecError::Missing("query")),
        Some(v) => v,
    };
    let mut query = Query::parse(value).map_err(|e| SpecError::Query(e.to_string()))?;
    query.restricted = false;
    Ok(query)
}

/// `headers`: an object of name → string (or list of strings, one header
/// line each).
fn headers(obj: &Map<String, Value>) -> Result<HeaderMap, SpecError> {
    let invalid = |reason: String| SpecError::Invalid {
        field: "headers",
        reason,
    };
    let given = match obj.get("headers") {
        None | Some(Value::Null) => return Ok(HeaderMap::new()),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(invalid("must be an object of name: value".into())),
    };
    let mut headers = HeaderMap::with_capacity(given.len());
    for (name, value) in given {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| invalid(format!("{name:?} is not a valid header name")))?;
        let values = match value {
            Value::Array(list) => list.iter().collect(),
            one => vec![one],
        };
        for v in values {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => return Err(invalid(format!("{name} must be a string"))),
            };
            let value = HeaderValue::from_str(&text)
                .map_err(|_| invalid(format!("{name} has an invalid value")))?;
            headers.append(name.clone(), value);
        }
    }
    strip_hop_by_hop(&mut headers);
    headers.remove(CONTENT_LENGTH);
    // An empty Host would be worse than none: the proxy then sets the
    // upstream's own.
    if headers.get(HOST).is_some_and(|h| h.is_empty()) {
        headers.remove(HOST);
    }
    Ok(headers)
}

/// The body rule: POST/PUT/PATCH/DELETE need one, GET/HEAD must not have
/// one (`null` counts as absent). Returns the bytes and whether they are
/// JSON-encoded by the proxy.
fn body(obj: &Map<String, Value>, method: &Method) -> Result<(Bytes, bool), SpecError> {
    let given = obj.get("body").filter(|v| !v.is_null());
    let needs = matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    match (given, needs) {
        (None, false) => Ok((Bytes::new(), false)),
        (None, true) => Err(SpecError::BodyRequired(method_name(method))),
        (Some(_), false) => Err(SpecError::BodyForbidden(method_name(method))),
        (Some(Value::String(s)), true) => Ok((Bytes::from(s.clone()), false)),
        // Parsed from JSON a moment ago, so it encodes again (see
        // `protocol::json_body`); were it not to, the caller hears why
        // instead of an empty body going upstream.
        (Some(v), true) => match crate::protocol::json_body(v) {
            Ok(body) => Ok((Bytes::from(body), true)),
            Err(e) => Err(SpecError::Invalid {
                field: "body",
                reason: format!("cannot be encoded as JSON: {e}"),
            }),
        },
    }
}

fn method_name(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        _ => "PATCH",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<ProxySpec, Vec<SpecError>> {
        ProxySpec::parse(v.to_string().as_bytes())
    }

    const Q: fn() -> Value = || json!({"application": "app"});

    #[test]
    fn methods_and_body_rules() {
        for m in ["GET", "HEAD", "get"] {
            assert!(parse(json!({"method": m, "route": "/", "query": Q()})).is_ok());
            assert_eq!(
                parse(json!({"method": m, "route": "/", "query": Q(), "body": "x"})).unwrap_err(),
                vec![SpecError::BodyForbidden(if m == "HEAD" {
                    "HEAD"
                } else {
                    "GET"
                })]
            );
        }
        for m in ["POST", "PUT", "PATCH", "DELETE"] {
            let e = parse(json!({"method": m, "route": "/", "query": Q()})).unwrap_err();
            assert!(matches!(e[..], [SpecError::BodyRequired(_)]), "{e:?}");
            let e = parse(json!({"method": m, "route": "/", "query": Q(), "body": null}));
            assert!(e.is_err());
            let s = parse(json!({"method": m, "route": "/", "query": Q(), "body": "raw text"}))
                .unwrap();
            assert_eq!(&s.body[..], b"raw text");
            assert!(!s.headers.contains_key(CONTENT_TYPE));
            let s = parse(json!({"method": m, "route": "/", "query": Q(), "body": {"a": [1]}}))
                .unwrap();
            assert_eq!(&s.body[..], br#"{"a":[1]}"#);
            assert_eq!(s.headers[CONTENT_TYPE], "application/json");
        }
        for m in ["CONNECT", "OPTIONS", "TRACE", "BREW"] {
            let e = parse(json!({"method": m, "route": "/", "query": Q()})).unwrap_err();
            assert_eq!(e, vec![SpecError::Method(m.into())]);
        }
    }

    #[test]
    fn missing_fields_are_all_reported() {
        let e = parse(json!({})).unwrap_err();
        assert_eq!(
            e,
            vec![
                SpecError::Missing("method"),
                SpecError::Missing("route"),
                SpecError::Missing("query")
            ]
        );
        assert_eq!(parse(json!([1])).unwrap_err(), vec![SpecError::NotObject]);
        assert!(matches!(
            ProxySpec::parse(b"{").unwrap_err()[..],
            [SpecError::Json(_)]
        ));
    }

    #[test]
    fn routes_and_queries() {
        let s = parse(json!({"method": "GET", "route": "a/b?x=1&y=%20", "query": Q()})).unwrap();
        assert_eq!(s.route.as_str(), "/a/b?x=1&y=%20");
        for bad in [json!(1), json!("/a b"), json!("/a#frag")] {
            let e = parse(json!({"method": "GET", "route": bad, "query": Q()})).unwrap_err();
            assert!(
                matches!(e[..], [SpecError::Invalid { field: "route", .. }]),
                "{e:?}"
            );
        }
        let e = parse(json!({"method": "GET", "route": "/", "query": {"ops": 3}})).unwrap_err();
        assert!(matches!(e[..], [SpecError::Query(_)]), "{e:?}");
        let s = parse(json!({"method": "GET", "route": "/", "query": {"restricted": true}}));
        assert!(!s.unwrap().query.restricted);
    }

    #[test]
    fn headers_drop_hop_by_hop_and_keep_the_rest() {
        let s = parse(
            json!({"method": "GET", "route": "/", "query": Q(), "headers": {
                "X-One": "1", "x-many": ["a", "b"], "Connection": "close, X-Secret",
                "X-Secret": "s", "Keep-Alive": "5", "TE": "trailers", "Upgrade": "h2c",
                "Proxy-Authorization": "p", "Transfer-Encoding": "chunked",
                "Content-Length": "99", "X-Num": 3
            }}),
        )
        .unwrap();
        let mut names: Vec<&str> = s.headers.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["x-many", "x-num", "x-one"]);
        assert_eq!(s.headers.get_all("x-many").iter().count(), 2);
        for bad in [
            json!({"a b": "x"}),
            json!({"x": {"y": 1}}),
            json!({"x": "a\nb"}),
            json!("h"),
        ] {
            let e = parse(json!({"method": "GET", "route": "/", "query": Q(), "headers": bad}))
                .unwrap_err();
            assert!(
                matches!(
                    e[..],
                    [SpecError::Invalid {
                        field: "headers",
                        ..
                    }]
                ),
                "{e:?}"
            );
        }
    }
}
