//! Writing HTTP/1.1 responses.

use serde_json::Value;

pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// A JSON response. A body that cannot be encoded (no `Value` is known
    /// to fail; see `protocol::json_body`) becomes a 500 that says so,
    /// never an empty body under the intended status.
    pub fn json(status: u16, body: &Value) -> Response {
        Response::encoded(status, crate::protocol::json_body(body))
    }

    fn encoded(status: u16, body: Result<Vec<u8>, crate::protocol::EncodeError>) -> Response {
        let (status, body) = match body {
            Ok(body) => (status, body),
            Err(_) => (500, UNENCODABLE.as_bytes().to_vec()),
        };
        Response {
            status,
            headers: vec![("content-type", "application/json".into())],
            body,
        }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    /// The bytes on the wire: status line, headers (with Content-Length and
    /// Connection added), blank line, body.
    pub fn to_bytes(&self, keep_alive: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.body.len());
        out.extend_from_slice(
            format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status)).as_bytes(),
        );
        for (name, value) in &self.headers {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        out.extend_from_slice(format!("content-length: {}\r\n", self.body.len()).as_bytes());
        let connection = if keep_alive { "keep-alive" } else { "close" };
        out.extend_from_slice(format!("connection: {connection}\r\n\r\n").as_bytes());
        out.extend_from_slice(&self.body);
        out
    }
}

/// The body of a response whose own body could not be encoded.
const UNENCODABLE: &str = r#"{"errors":["internal error: the response could not be encoded"]}"#;

fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        302 => "Found",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        500 => "Internal Server Error",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_status_headers_and_length() {
        let r = Response::json(404, &serde_json::json!({"code": 404})).with_header("x-a", "b");
        let text = String::from_utf8(r.to_bytes(false)).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        assert!(text.contains("content-type: application/json\r\n"));
        assert!(text.contains("x-a: b\r\n"));
        assert!(text.contains("content-length: 12\r\n"));
        assert!(text.ends_with("connection: close\r\n\r\n{\"code\":404}"));
    }

    #[test]
    fn a_body_that_cannot_be_encoded_is_a_500_saying_so() {
        // No `Value` fails to encode, so the failure is given.
        let failed = Err(crate::protocol::EncodeError::Serializer("x".into()));
        let r = Response::encoded(200, failed);
        assert_eq!(r.status, 500);
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"errors": ["internal error: the response could not be encoded"]})
        );
        let text = String::from_utf8(r.to_bytes(true)).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 500 Internal Server Error\r\n"),
            "{text}"
        );
    }
}
