//! Framed WAL records: what the fronts append and the sessionizer consumes (docs §1).

/// Bit 0 of the flags: Do-Not-Track or Global Privacy Control was set (drop user tags).
pub const FLAG_DNT: u8 = 1;
/// The payload is the request's JSON body (what fronts wrote before version 2; still read).
pub const JSON: u8 = 1;
/// The payload is the request's beacons, parsed and validated by `prepare` (`wire.rs`).
pub const PARSED: u8 = 2;

/// One request as stored in the WAL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// [`JSON`] or [`PARSED`]: what the payload is
    pub version: u8,
    pub flags: u8,
    pub recv_ms: u64,
    pub ip: &'a str,
    pub user_agent: &'a str,
    pub payload: &'a [u8],
}

impl Record<'_> {
    pub fn dnt(&self) -> bool {
        self.flags & FLAG_DNT != 0
    }
}

/// Appends one framed version-1 record (a JSON payload) to `out`.
pub fn encode(out: &mut Vec<u8>, flags: u8, recv_ms: u64, ip: &str, ua: &str, payload: &[u8]) {
    let at = begin(out, JSON, flags, recv_ms, ip, ua);
    out.extend_from_slice(payload);
    end(out, at);
}

/// Appends the header of a record to `out`; the caller appends the payload, then calls
/// [`end`] with the position returned.
pub fn begin(out: &mut Vec<u8>, version: u8, flags: u8, recv_ms: u64, ip: &str, ua: &str) -> usize {
    let ip = truncate_bytes(ip, u16::MAX as usize);
    let ua = truncate_bytes(ua, u16::MAX as usize);
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    out.push(version);
    out.push(flags);
    out.extend_from_slice(&recv_ms.to_le_bytes());
    out.extend_from_slice(&(ip.len() as u16).to_le_bytes());
    out.extend_from_slice(ip.as_bytes());
    out.extend_from_slice(&(ua.len() as u16).to_le_bytes());
    out.extend_from_slice(ua.as_bytes());
    at
}

/// Writes the length prefix of the record begun at `at`.
pub fn end(out: &mut [u8], at: usize) {
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

fn truncate_bytes(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Iterates the records of a batch. A frame whose content is damaged yields `Err` and is
/// skipped; a length prefix that runs past the batch yields `Err` and ends the iteration
/// (the next record cannot be found).
pub struct Records<'a> {
    rest: &'a [u8],
}

pub fn records(batch: &[u8]) -> Records<'_> {
    Records { rest: batch }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Record<'a>, ()>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let mut buf = self.rest;
        let frame = take(&mut buf, 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .and_then(|len| take(&mut buf, len));
        let Some(frame) = frame else {
            self.rest = &[];
            return Some(Err(()));
        };
        self.rest = buf;
        Some(parse_body(frame).ok_or(()))
    }
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if buf.len() < n {
        return None;
    }
    let (head, tail) = buf.split_at(n);
    *buf = tail;
    Some(head)
}

fn u16_at(buf: &mut &[u8]) -> Option<usize> {
    take(buf, 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
}

fn parse_body(mut body: &[u8]) -> Option<Record<'_>> {
    let head = take(&mut body, 2)?;
    if !matches!(head[0], JSON | PARSED) {
        return None;
    }
    let recv = take(&mut body, 8)?;
    let recv_ms = u64::from_le_bytes(recv.try_into().ok()?);
    let ip_len = u16_at(&mut body)?;
    let ip = std::str::from_utf8(take(&mut body, ip_len)?).ok()?;
    let ua_len = u16_at(&mut body)?;
    let user_agent = std::str::from_utf8(take(&mut body, ua_len)?).ok()?;
    Some(Record { version: head[0], flags: head[1], recv_ms, ip, user_agent, payload: body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut out = Vec::new();
        encode(&mut out, FLAG_DNT, 1_764_126_000_000, "203.0.113.0", "UA/1.0", b"{\"a\":1}");
        encode(&mut out, 0, 5, "", "", b"");
        let recs: Vec<_> = records(&out).collect();
        assert_eq!(recs.len(), 2);
        let r = recs[0].as_ref().unwrap();
        assert!(r.dnt());
        assert_eq!((r.recv_ms, r.ip, r.user_agent, r.payload), (1_764_126_000_000, "203.0.113.0", "UA/1.0", &b"{\"a\":1}"[..]));
        assert_eq!(recs[1].as_ref().unwrap().recv_ms, 5);
    }

    #[test]
    fn truncated_and_garbage_batches_fail_without_panic() {
        let mut out = Vec::new();
        encode(&mut out, 0, 7, "1.2.3.4", "ua", b"{}");
        for cut in 0..out.len() {
            let got: Vec<_> = records(&out[..cut]).collect();
            assert!(got.iter().all(Result::is_err) || cut == 0, "cut {cut}");
        }
        let mut bad = out.clone();
        bad[4] = 9; // version: the frame is skipped, the next one still read
        encode(&mut bad, 0, 8, "", "", b"{}");
        let got: Vec<_> = records(&bad).collect();
        assert_eq!(got.len(), 2);
        assert!(got[0].is_err());
        assert_eq!(got[1].as_ref().unwrap().recv_ms, 8);
        assert_eq!(records(&[0xff; 3]).count(), 1);
    }
}
