//! The load generator's write client: HTTP/1.1 POSTs over one keep-alive connection,
//! each request's head and body handed to the kernel in two writes.
//!
//! Why not `ureq`, which the rest of this crate uses: it copies a request body to the
//! socket through an 8 KiB buffer, so a 5,000-reading line-protocol request (about
//! 800 KB) took about 100 `sendto` calls, and on a loopback connection each call runs
//! the receiving side's TCP stack too. At 500,000 readings/s that was about a tenth of
//! a core in the client alone, on the same two cores as the server it measures.
//!
//! What it speaks: `http://host[:port][/path]` URLs (no TLS, no proxy, no redirects);
//! responses with a `Content-Length`, `Transfer-Encoding: chunked`, or a body that ends
//! when the server closes the connection; `Connection: close`. A request on a kept-alive
//! connection the server has closed in the meantime (nothing of a response read) is
//! sent once more on a new connection, as browsers and `ureq` do.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Longest response body kept; a longer one is read and dropped with its connection.
const MAX_BODY: usize = 1 << 20;
/// Longest status or header line accepted.
const MAX_LINE: usize = 16 * 1024;
/// Connection attempts give up after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// `Retry-After`, when given in seconds.
    pub retry_after: Option<Duration>,
    pub body: Vec<u8>,
}

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum Http1Error {
    #[error("cannot connect to {authority}: {source}")]
    Connect {
        authority: String,
        source: io::Error,
    },
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("bad response: {0}")]
    Protocol(String),
}

/// Why a URL cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{url}: {reason}")]
pub struct UrlError {
    pub url: String,
    pub reason: &'static str,
}

/// One keep-alive connection that POSTs to one URL.
#[derive(Debug)]
pub struct Http1Client {
    authority: String,
    /// The request head up to and including `Content-Length: `.
    head: Vec<u8>,
    timeout: Duration,
    conn: Option<BufReader<TcpStream>>,
}

impl Http1Client {
    /// A client for POSTs of `content_type` to `url`, with `Authorization: {auth}` when
    /// given. `timeout` bounds each connect, write and read on the socket.
    pub fn new(
        url: &str,
        content_type: &str,
        auth: Option<&str>,
        timeout: Duration,
    ) -> Result<Self, UrlError> {
        let bad = |reason| UrlError {
            url: url.to_owned(),
            reason,
        };
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| bad("the load generator writes over plain http:// only"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(bad("no host"));
        }
        if [authority, path, content_type, auth.unwrap_or("")]
            .iter()
            .any(|s| s.bytes().any(|b| b.is_ascii_control()))
        {
            return Err(bad("control characters in the request"));
        }
        // A port after the host (after the bracket of an IPv6 address), else 80.
        let has_port = match authority.rfind(']') {
            Some(i) => authority[i..].contains(':'),
            None => authority.contains(':'),
        };
        let authority = if has_port {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let mut head = format!(
            "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: {content_type}\r\n"
        );
        if let Some(auth) = auth {
            head.push_str("Authorization: ");
            head.push_str(auth);
            head.push_str("\r\n");
        }
        head.push_str("Content-Length: ");
        Ok(Self {
            authority,
            head: head.into_bytes(),
            timeout,
            conn: None,
        })
    }

    /// POSTs `body` and reads the whole response.
    pub fn post(&mut self, body: &[u8]) -> Result<Response, Http1Error> {
        let reused = self.conn.is_some();
        match self.exchange(body) {
            Err(Http1Error::Io(e)) if reused && closed_by_peer(&e) => {
                self.conn = None;
                self.exchange(body)
            }
            result => result,
        }
    }

    fn connect(&self) -> Result<BufReader<TcpStream>, Http1Error> {
        let failed = |source| Http1Error::Connect {
            authority: self.authority.clone(),
            source,
        };
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        for addr in self.authority.to_socket_addrs().map_err(failed)? {
            match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT.min(self.timeout)) {
                Ok(stream) => {
                    // The body follows the head at once; Nagle would hold it back for
                    // the head's acknowledgement.
                    stream.set_nodelay(true).map_err(failed)?;
                    stream
                        .set_read_timeout(Some(self.timeout))
                        .map_err(failed)?;
                    stream
                        .set_write_timeout(Some(self.timeout))
                        .map_err(failed)?;
                    return Ok(BufReader::with_capacity(8 * 1024, stream));
                }
                Err(e) => last = e,
            }
        }
        Err(failed(last))
    }

    fn exchange(&mut self, body: &[u8]) -> Result<Response, Http1Error> {
        let mut conn = match self.conn.take() {
            Some(conn) => conn,
            None => self.connect()?,
        };
        let mut head = self.head.clone();
        head.extend_from_slice(body.len().to_string().as_bytes());
        head.extend_from_slice(b"\r\n\r\n");
        let stream = conn.get_mut();
        stream.write_all(&head)?;
        stream.write_all(body)?;
        let (response, keep) = read_response(&mut conn)?;
        if keep {
            self.conn = Some(conn);
        }
        Ok(response)
    }
}

/// Reads one response; the flag says whether the connection can carry another.
fn read_response(conn: &mut BufReader<TcpStream>) -> Result<(Response, bool), Http1Error> {
    let status = loop {
        let line = read_line(conn)?;
        if line.is_empty() {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        let mut parts = line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        let code = parts.next().and_then(|c| c.trim().parse::<u16>().ok());
        let (true, Some(code)) = (version.starts_with("HTTP/1."), code) else {
            return Err(Http1Error::Protocol(format!("status line {line:?}")));
        };
        let keep_alive_default = version == "HTTP/1.1";
        let mut length = None;
        let mut chunked = false;
        let mut keep = keep_alive_default;
        let mut retry_after = None;
        loop {
            let line = read_line(conn)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let Some((name, value)) = line.split_once(':') else {
                return Err(Http1Error::Protocol(format!("header line {line:?}")));
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(
                    value
                        .parse::<usize>()
                        .map_err(|_| Http1Error::Protocol(format!("Content-Length {value:?}")))?,
                );
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.to_ascii_lowercase().ends_with("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                let value = value.to_ascii_lowercase();
                if value.contains("close") {
                    keep = false;
                } else if value.contains("keep-alive") {
                    keep = true;
                }
            } else if name.eq_ignore_ascii_case("retry-after") {
                retry_after = value.parse::<u64>().ok().map(Duration::from_secs);
            }
        }
        // Interim responses (100 Continue and the like) come before the real one.
        if (100..200).contains(&code) {
            continue;
        }
        break (code, length, chunked, keep, retry_after);
    };
    let (code, length, chunked, mut keep, retry_after) = status;
    let mut body = Vec::new();
    if code == 204 || code == 304 {
        // No body, whatever the headers say.
    } else if chunked {
        keep &= read_chunked(conn, &mut body)?;
    } else if let Some(length) = length {
        if length > MAX_BODY {
            io::copy(&mut conn.take(length as u64), &mut io::sink())?;
            keep = false;
        } else {
            body.resize(length, 0);
            conn.read_exact(&mut body)?;
        }
    } else {
        // The body ends with the connection.
        conn.take(MAX_BODY as u64).read_to_end(&mut body)?;
        keep = false;
    }
    Ok((
        Response {
            status: code,
            retry_after,
            body,
        },
        keep,
    ))
}

/// Reads a chunked body into `body` (up to [`MAX_BODY`]); false when it was longer
/// and the rest was dropped.
fn read_chunked(conn: &mut BufReader<TcpStream>, body: &mut Vec<u8>) -> Result<bool, Http1Error> {
    let mut whole = true;
    loop {
        let line = read_line(conn)?;
        let size = line.trim_end().split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16)
            .map_err(|_| Http1Error::Protocol(format!("chunk size {size:?}")))?;
        if size == 0 {
            // Trailers, then the blank line.
            while !read_line(conn)?.trim_end().is_empty() {}
            return Ok(whole);
        }
        if body.len() + size > MAX_BODY {
            io::copy(&mut conn.take(size as u64), &mut io::sink())?;
            whole = false;
        } else {
            let start = body.len();
            body.resize(start + size, 0);
            conn.read_exact(&mut body[start..])?;
        }
        let mut crlf = [0u8; 2];
        conn.read_exact(&mut crlf)?;
    }
}

/// One line of the head, `\r\n` included; empty at the end of the stream.
fn read_line(conn: &mut BufReader<TcpStream>) -> Result<String, Http1Error> {
    let mut line = String::new();
    conn.take(MAX_LINE as u64).read_line(&mut line)?;
    if !line.is_empty() && !line.ends_with('\n') {
        return Err(Http1Error::Protocol("header line too long".to_owned()));
    }
    Ok(line)
}

/// Whether a request failed because the server had closed the kept-alive connection
/// before it arrived.
fn closed_by_peer(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    /// Reads one request, head and body, as it came.
    fn read_request(reader: &mut BufReader<TcpStream>) -> Vec<u8> {
        let mut request = Vec::new();
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("read");
            request.extend_from_slice(line.as_bytes());
            if let Some(v) = line.strip_prefix("Content-Length: ") {
                length = v.trim().parse().expect("length");
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).expect("body");
        request.extend_from_slice(&body);
        request
    }

    /// A server that answers each request on one connection with the next of
    /// `answers`, and hands back the requests it read.
    fn serve(answers: Vec<&'static [u8]>) -> (String, thread::JoinHandle<Vec<Vec<u8>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!(
            "http://{}/api/v2/write",
            listener.local_addr().expect("addr")
        );
        let handle = thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let mut reader = BufReader::new(stream);
            let mut requests = Vec::new();
            for answer in answers {
                requests.push(read_request(&mut reader));
                reader.get_mut().write_all(answer).expect("answer");
            }
            requests
        });
        (url, handle)
    }

    #[test]
    fn posts_over_one_connection_and_reads_every_kind_of_body() {
        let (url, server) = serve(vec![
            b"HTTP/1.1 204 No Content\r\nx-request-id: a\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 11\r\n\r\nline 1: bad",
            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 2\r\ntransfer-encoding: chunked\r\n\r\n4\r\nfull\r\n5\r\n, try\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nto the end",
        ]);
        let mut client =
            Http1Client::new(&url, "text/plain", Some("Bearer t"), Duration::from_secs(5))
                .expect("url");
        let first = client.post(b"power_metrics a=1").expect("first");
        assert_eq!((first.status, first.body.as_slice()), (204, &b""[..]));
        let second = client.post(b"x").expect("second");
        assert_eq!(
            (second.status, second.body.as_slice()),
            (400, &b"line 1: bad"[..])
        );
        let third = client.post(b"y").expect("third");
        assert_eq!(third.status, 503);
        assert_eq!(third.retry_after, Some(Duration::from_secs(2)));
        assert_eq!(third.body, b"full, try");
        let fourth = client.post(b"z").expect("fourth");
        assert_eq!(
            (fourth.status, fourth.body.as_slice()),
            (200, &b"to the end"[..])
        );
        assert!(client.conn.is_none(), "closed connection kept");
        let requests = server.join().expect("server");
        let first = String::from_utf8(requests[0].clone()).expect("utf8");
        assert!(
            first.starts_with("POST /api/v2/write HTTP/1.1\r\n"),
            "{first}"
        );
        assert!(first.contains("\r\nAuthorization: Bearer t\r\n"), "{first}");
        assert!(
            first.contains("\r\nContent-Type: text/plain\r\n"),
            "{first}"
        );
        assert!(
            first.ends_with("\r\nContent-Length: 17\r\n\r\npower_metrics a=1"),
            "{first}"
        );
    }

    #[test]
    fn a_connection_the_server_closed_is_replaced_once() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/write", listener.local_addr().expect("addr"));
        let server = thread::spawn(move || {
            // Each connection: one answer, then closed without a word.
            for _ in 0..2 {
                let (stream, _) = listener.accept().expect("accept");
                let mut reader = BufReader::new(stream);
                read_request(&mut reader);
                reader
                    .get_mut()
                    .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                    .expect("answer");
            }
        });
        let mut client =
            Http1Client::new(&url, "text/plain", None, Duration::from_secs(5)).expect("url");
        assert_eq!(client.post(b"a").expect("first").status, 204);
        // Give the server time to close the first connection.
        thread::sleep(Duration::from_millis(100));
        assert_eq!(
            client
                .post(b"b")
                .expect("second, on a new connection")
                .status,
            204
        );
        server.join().expect("server");
    }

    #[test]
    fn refuses_what_it_cannot_speak() {
        let t = Duration::from_secs(1);
        assert!(Http1Client::new("https://h/x", "a", None, t).is_err());
        assert!(Http1Client::new("http:///x", "a", None, t).is_err());
        assert!(Http1Client::new("http://h/x\r\nEvil: 1", "a", None, t).is_err());
        let c = Http1Client::new("http://h", "a", None, t).expect("bare host");
        assert_eq!(c.authority, "h:80");
        assert!(String::from_utf8_lossy(&c.head).starts_with("POST / HTTP/1.1\r\n"));
        let c = Http1Client::new("http://[::1]:9/w", "a", None, t).expect("v6");
        assert_eq!(c.authority, "[::1]:9");
    }

    #[test]
    fn a_server_that_is_not_there_is_a_connect_error() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let mut c = Http1Client::new(
            &format!("http://127.0.0.1:{port}/w"),
            "a",
            None,
            Duration::from_secs(1),
        )
        .expect("url");
        assert!(matches!(c.post(b"x"), Err(Http1Error::Connect { .. })));
    }
}
