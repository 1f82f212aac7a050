//! Just enough of an HTTP/1.1 response parser to find where each response ends on a keep-alive
//! connection: the status line, `Content-Length`, `Transfer-Encoding: chunked`, and
//! `Connection: close`.

use std::io::{self, Read};

/// One response read off the connection (its body is skipped, not kept).
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// The server said `Connection: close`: a new connection is needed for the next request.
    pub close: bool,
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads one response from `stream`, with `buf` holding bytes already read (and, on return,
/// the bytes read past this response).
pub fn read_response(stream: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<Response> {
    let head_end = loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            break end;
        }
        fill(stream, buf)?;
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| invalid("head not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    if !status_line.starts_with("HTTP/1.") {
        return Err(invalid("not an HTTP/1.x status line"));
    }
    let status = status_line
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("no status code"))?;
    let mut length = None;
    let mut chunked = false;
    let mut close = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| invalid("bad Content-Length"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    buf.drain(..head_end + 4);
    if chunked {
        skip_chunked(stream, buf)?;
    } else if let Some(length) = length {
        while buf.len() < length {
            fill(stream, buf)?;
        }
        buf.drain(..length);
    } else if !(status == 204 || status == 304 || (100..200).contains(&status)) {
        // No length: the body runs to the end of the connection.
        while fill(stream, buf).is_ok() {}
        buf.clear();
        close = true;
    }
    Ok(Response { status, close })
}

/// Skips a chunked body: chunks until the zero-size one, then the trailers and the blank line.
fn skip_chunked(stream: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<()> {
    loop {
        let line_end = loop {
            if let Some(end) = find(buf, b"\r\n") {
                break end;
            }
            fill(stream, buf)?;
        };
        let line = std::str::from_utf8(&buf[..line_end]).map_err(|_| invalid("chunk size"))?;
        let size_hex = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| invalid("chunk size"))?;
        buf.drain(..line_end + 2);
        if size == 0 {
            // Trailers, each ending in CRLF, then an empty line.
            loop {
                let end = loop {
                    if let Some(end) = find(buf, b"\r\n") {
                        break end;
                    }
                    fill(stream, buf)?;
                };
                buf.drain(..end + 2);
                if end == 0 {
                    return Ok(());
                }
            }
        }
        while buf.len() < size + 2 {
            fill(stream, buf)?;
        }
        buf.drain(..size + 2);
    }
}

/// Appends what one `read` returns; the end of the stream is an error (mid-response).
fn fill(stream: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<()> {
    let mut chunk = [0u8; 8192];
    let n = stream.read(&mut chunk)?;
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that returns its input a few bytes at a time (responses split across reads).
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.1.min(self.0.len()).min(out.len());
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn read_all(input: &[u8], step: usize) -> Vec<io::Result<Response>> {
        let mut stream = Trickle(input, step);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        loop {
            let result = read_response(&mut stream, &mut buf);
            let failed = result.is_err();
            out.push(result);
            if failed {
                return out;
            }
        }
    }

    #[test]
    fn keep_alive_responses_in_a_row_whatever_the_read_sizes() {
        let input = b"HTTP/1.1 204 No Content\r\nServer: x\r\n\r\n\
            HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello\
            HTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\n\r\n\
            3;x=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nTrailer: t\r\n\r\n\
            HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        for step in [1, 3, 7, 64, 8192] {
            let responses = read_all(input, step);
            let statuses: Vec<_> = responses
                .iter()
                .filter_map(|r| r.as_ref().ok().map(|r| (r.status, r.close)))
                .collect();
            assert_eq!(
                statuses,
                [(204, false), (200, false), (500, false), (429, true)],
                "step {step}"
            );
            let end = responses.last().unwrap().as_ref().unwrap_err();
            assert_eq!(end.kind(), io::ErrorKind::UnexpectedEof);
        }
    }

    #[test]
    fn garbage_and_truncation_are_errors() {
        let results = read_all(b"SSH-2.0-OpenSSH\r\n\r\n", 100);
        assert_eq!(
            results[0].as_ref().unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        let results = read_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", 100);
        assert_eq!(
            results[0].as_ref().unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    #[test]
    fn a_body_without_length_runs_to_the_end_of_the_connection() {
        let results = read_all(b"HTTP/1.0 200 OK\r\n\r\nsome body", 4);
        assert_eq!(
            results[0].as_ref().unwrap(),
            &Response {
                status: 200,
                close: true
            }
        );
    }
}
