//! Reading one HTTP/1.1 request off a socket: the head parsed by httparse,
//! the body by Content-Length or chunked transfer coding, both bounded in
//! size and in number of fields. Time is bounded by the caller, which reads
//! the head and the body each against a deadline (see `serve`).

use futures_lite::{AsyncRead, AsyncReadExt};

/// Largest request head (request line and headers) accepted; also the
/// largest trailer section after a chunked body.
pub const MAX_HEAD: usize = 16 * 1024;

/// What one request may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body: usize,
    /// Header fields in the head; also trailer fields after a chunked body.
    pub max_headers: usize,
}

#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// The path without the query string.
    pub path: String,
    pub query: Option<String>,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether the client wants the connection kept open afterwards.
    pub keep_alive: bool,
    /// An HTTP/1.0 request: its response may not use chunked coding.
    pub http10: bool,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether a comma-separated header contains `token` (case-insensitive).
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// The value of one query-string parameter (no percent-decoding: the
    /// parameters this server reads are plain words).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .as_deref()?
            .split('&')
            .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The peer closed before sending a request: not an error to report.
    #[error("connection closed")]
    Closed,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("request head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("more than {0} header fields")]
    TooManyHeaders(usize),
    #[error("more than {0} trailer fields")]
    TooManyTrailers(usize),
    #[error("trailer section larger than {MAX_HEAD} bytes")]
    TrailersTooLarge,
    #[error("request body larger than {0} bytes")]
    BodyTooLarge(usize),
}

/// Reads one request, head then body. `buf` holds bytes already read from
/// the socket and, on return, whatever followed the request (a pipelined
/// request, or the first websocket frames after an upgrade).
pub async fn read_request<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    limits: Limits,
) -> Result<Request, ReadError> {
    let (mut request, body) = read_head(stream, buf, limits.max_headers).await?;
    request.body = read_body(stream, buf, body, limits).await?;
    Ok(request)
}

/// Reads a request's head; its body, if any, is still to be read with
/// [`read_body`] and the returned [`BodyKind`].
pub async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    max_headers: usize,
) -> Result<(Request, BodyKind), ReadError> {
    let (request, head_len, body) = loop {
        if let Some(parsed) = parse_head(buf, max_headers)? {
            break parsed;
        }
        if buf.len() >= MAX_HEAD {
            return Err(ReadError::HeadTooLarge);
        }
        if read_more(stream, buf).await? == 0 {
            return Err(if buf.is_empty() {
                ReadError::Closed
            } else {
                ReadError::Malformed("connection closed inside the request head".into())
            });
        }
    };
    buf.drain(..head_len);
    Ok((request, body))
}

/// Reads the body a head announced.
pub async fn read_body<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    body: BodyKind,
    limits: Limits,
) -> Result<Vec<u8>, ReadError> {
    Ok(match body {
        BodyKind::None => Vec::new(),
        BodyKind::Length(len) => {
            if len > limits.max_body {
                return Err(ReadError::BodyTooLarge(limits.max_body));
            }
            while buf.len() < len {
                if read_more(stream, buf).await? == 0 {
                    return Err(ReadError::Malformed(
                        "connection closed inside the body".into(),
                    ));
                }
            }
            buf.drain(..len).collect()
        }
        BodyKind::Chunked => read_chunked(stream, buf, limits).await?,
    })
}

/// How a request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    None,
    Length(usize),
    Chunked,
}

fn parse_head(
    buf: &[u8],
    max_headers: usize,
) -> Result<Option<(Request, usize, BodyKind)>, ReadError> {
    let mut headers = vec![httparse::EMPTY_HEADER; max_headers];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ReadError::TooManyHeaders(max_headers));
        }
        Err(e) => return Err(ReadError::Malformed(e.to_string())),
    };
    let method = req.method.unwrap_or_default().to_string();
    let target = req.path.unwrap_or_default();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    };
    let mut out_headers = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| ReadError::Malformed(format!("header {} is not UTF-8", h.name)))?;
        out_headers.push((h.name.to_ascii_lowercase(), value.trim().to_string()));
    }
    let http10 = req.version == Some(0);
    let mut request = Request {
        method,
        path,
        query,
        headers: out_headers,
        body: Vec::new(),
        keep_alive: !http10,
        http10,
    };
    if request.header_has_token("connection", "close") {
        request.keep_alive = false;
    } else if http10 && request.header_has_token("connection", "keep-alive") {
        request.keep_alive = true;
    }
    let body = if let Some(te) = request.header("transfer-encoding") {
        if !te.eq_ignore_ascii_case("chunked") {
            return Err(ReadError::Malformed(format!(
                "unsupported transfer-encoding {te}"
            )));
        }
        if request.header("content-length").is_some() {
            return Err(ReadError::Malformed(
                "both content-length and transfer-encoding".into(),
            ));
        }
        BodyKind::Chunked
    } else {
        let lengths: Vec<&str> = request
            .headers
            .iter()
            .filter(|(n, _)| n == "content-length")
            .map(|(_, v)| v.as_str())
            .collect();
        match lengths.as_slice() {
            [] => BodyKind::None,
            [len] => BodyKind::Length(
                len.parse()
                    .map_err(|_| ReadError::Malformed(format!("invalid content-length {len}")))?,
            ),
            _ => {
                return Err(ReadError::Malformed(
                    "several content-length headers".into(),
                ));
            }
        }
    };
    Ok(Some((request, head_len, body)))
}

async fn read_chunked<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    limits: Limits,
) -> Result<Vec<u8>, ReadError> {
    let max_body = limits.max_body;
    let mut body = Vec::new();
    loop {
        // Chunk size line.
        let (consumed, size) = loop {
            match httparse::parse_chunk_size(buf) {
                Ok(httparse::Status::Complete((n, size))) => break (n, size),
                Ok(httparse::Status::Partial) => {
                    if buf.len() > 1024 {
                        return Err(ReadError::Malformed("chunk size line too long".into()));
                    }
                    if read_more(stream, buf).await? == 0 {
                        return Err(ReadError::Malformed(
                            "connection closed inside a chunk".into(),
                        ));
                    }
                }
                Err(_) => return Err(ReadError::Malformed("invalid chunk size".into())),
            }
        };
        buf.drain(..consumed);
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        if size > max_body.saturating_sub(body.len()) {
            return Err(ReadError::BodyTooLarge(max_body));
        }
        // Chunk data plus its CRLF (the last chunk: optional trailers, CRLF).
        if size == 0 {
            // Trailers are skipped, but counted and measured like headers:
            // otherwise a client could stream trailer lines forever.
            let mut trailers = 0;
            let mut trailer_bytes = 0;
            loop {
                if let Some(end) = find(buf, b"\r\n") {
                    if end == 0 {
                        buf.drain(..2);
                        return Ok(body);
                    }
                    trailers += 1;
                    trailer_bytes += end + 2;
                    if trailers > limits.max_headers {
                        return Err(ReadError::TooManyTrailers(limits.max_headers));
                    }
                    if trailer_bytes > MAX_HEAD {
                        return Err(ReadError::TrailersTooLarge);
                    }
                    buf.drain(..end + 2);
                    continue;
                }
                if trailer_bytes + buf.len() > MAX_HEAD {
                    return Err(ReadError::TrailersTooLarge);
                }
                if read_more(stream, buf).await? == 0 {
                    return Err(ReadError::Malformed("connection closed in trailers".into()));
                }
            }
        }
        while buf.len() < size + 2 {
            if read_more(stream, buf).await? == 0 {
                return Err(ReadError::Malformed(
                    "connection closed inside a chunk".into(),
                ));
            }
        }
        if &buf[size..size + 2] != b"\r\n" {
            return Err(ReadError::Malformed("chunk not followed by CRLF".into()));
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads what the socket has (at most 4 KiB) onto `buf`; 0 at the end.
pub async fn read_more<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> std::io::Result<usize> {
    let mut chunk = [0u8; 4096];
    let n = stream.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(input: &[u8], max_body: usize) -> (Result<Request, ReadError>, Vec<u8>) {
        read_with(
            input,
            Limits {
                max_body,
                max_headers: 64,
            },
        )
    }

    fn read_with(input: &[u8], limits: Limits) -> (Result<Request, ReadError>, Vec<u8>) {
        let mut stream = futures_lite::io::Cursor::new(input.to_vec());
        let mut buf = Vec::new();
        let r = futures_lite::future::block_on(read_request(&mut stream, &mut buf, limits));
        (r, buf)
    }

    #[test]
    fn parses_head_query_and_length_body_leaving_the_rest() {
        let (r, rest) = read(
            b"POST /api/v1/query?x=1&encoding=etf HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET",
            100,
        );
        let r = r.unwrap();
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/api/v1/query");
        assert_eq!(r.query_param("encoding"), Some("etf"));
        assert_eq!(r.header("host"), Some("a"));
        assert_eq!(r.body, b"abc");
        assert!(r.keep_alive);
        assert_eq!(rest, b"GET");
    }

    #[test]
    fn decodes_chunked_bodies_with_trailers() {
        let (r, rest) = read(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nT: v\r\n\r\nZ",
            100,
        );
        assert_eq!(r.unwrap().body, b"abcde");
        assert_eq!(rest, b"Z");
    }

    #[test]
    fn rejects_bad_and_oversized_requests() {
        assert!(matches!(
            read(b"GARBAGE\r\n\r\n", 10).0,
            Err(ReadError::Malformed(_))
        ));
        assert!(matches!(
            read(b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n", 10).0,
            Err(ReadError::BodyTooLarge(10))
        ));
        assert!(matches!(
            read(b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n", 10).0,
            Err(ReadError::Malformed(_))
        ));
        assert!(matches!(
            read(
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                10
            )
            .0,
            Err(ReadError::Malformed(_))
        ));
        assert!(matches!(
            read(
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                10
            )
            .0,
            Err(ReadError::Malformed(_))
        ));
        assert!(matches!(read(b"", 10).0, Err(ReadError::Closed)));
        assert!(matches!(
            read(b"GET / HT", 10).0,
            Err(ReadError::Malformed(_))
        ));
        let huge = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &vec![b'a'; MAX_HEAD]].concat();
        assert!(matches!(read(&huge, 10).0, Err(ReadError::HeadTooLarge)));
    }

    #[test]
    fn connection_close_and_http10() {
        let (r, _) = read(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", 10);
        assert!(!r.unwrap().keep_alive);
        let (r, _) = read(b"GET / HTTP/1.0\r\n\r\n", 10);
        let r = r.unwrap();
        assert!(!r.keep_alive && r.http10);
    }
}

#[cfg(test)]
mod field_limits {
    use super::*;

    fn read(input: &[u8], max_headers: usize) -> Result<Request, ReadError> {
        let mut stream = futures_lite::io::Cursor::new(input.to_vec());
        let limits = Limits {
            max_body: 1 << 20,
            max_headers,
        };
        futures_lite::future::block_on(read_request(&mut stream, &mut Vec::new(), limits))
    }

    fn head_with(headers: usize) -> Vec<u8> {
        let mut head = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..headers {
            head.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        head
    }

    fn chunked_with(trailers: usize, trailer_len: usize) -> Vec<u8> {
        let mut req =
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n".to_vec();
        for i in 0..trailers {
            req.extend_from_slice(format!("T-{i}: {}\r\n", "v".repeat(trailer_len)).as_bytes());
        }
        req.extend_from_slice(b"\r\n");
        req
    }

    #[test]
    fn header_fields_are_counted() {
        assert!(read(&head_with(8), 8).is_ok());
        assert!(matches!(
            read(&head_with(9), 8),
            Err(ReadError::TooManyHeaders(8))
        ));
    }

    #[test]
    fn trailer_fields_are_counted_and_measured() {
        assert_eq!(read(&chunked_with(8, 1), 8).unwrap().body, b"a");
        assert!(matches!(
            read(&chunked_with(9, 1), 8),
            Err(ReadError::TooManyTrailers(8))
        ));
        // Few fields, but more bytes than a head may have.
        assert!(matches!(
            read(&chunked_with(4, MAX_HEAD / 3), 8),
            Err(ReadError::TrailersTooLarge)
        ));
        // One endless trailer line.
        let mut endless = chunked_with(0, 0);
        endless.truncate(endless.len() - 2);
        endless.extend_from_slice(&vec![b'x'; MAX_HEAD + 10]);
        assert!(matches!(
            read(&endless, 8),
            Err(ReadError::TrailersTooLarge)
        ));
    }
}
