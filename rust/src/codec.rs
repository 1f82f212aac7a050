//! The stored form of a session's detail (its timeline JSON).
//!
//! A detail is written once per closed session (and once a second per changed open session)
//! and read when someone opens that session, so the store keeps it LZ4-compressed: a tag
//! byte, the JSON's length (u32, little-endian) and one LZ4 block. Timelines repeat their
//! keys, URLs and names, so this is about 2.8× smaller for typical visits (and the value
//! then fits in an LMDB leaf page instead of an overflow page of its own), for a few µs a
//! session either way. A stored value that starts with `{` is a detail written before
//! compression (or one compression did not shrink) and is returned as it is.

/// Tag byte of an LZ4-compressed detail (never the first byte of JSON).
pub const LZ4: u8 = 0x01;

/// Largest detail `unpack` inflates: far above any timeline the core writes (200 actions with
/// their resources is a few MiB), low enough that a damaged length cannot exhaust memory.
pub const MAX_DETAIL_BYTES: usize = 256 << 20;

/// Why a stored detail cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnpackError {
    /// Empty, or a first byte that is neither the LZ4 tag nor `{`.
    UnknownFormat,
    /// The length is missing or larger than [`MAX_DETAIL_BYTES`].
    BadLength,
    /// The block does not inflate to exactly the stated length.
    Corrupt,
}

impl UnpackError {
    pub fn message(&self) -> &'static str {
        match self {
            UnpackError::UnknownFormat => "a stored detail of unknown format",
            UnpackError::BadLength => "a stored detail with a damaged length",
            UnpackError::Corrupt => "a stored detail whose compressed block is damaged",
        }
    }
}

/// The stored form of `json`: compressed behind the tag, or `json` itself when that is not
/// smaller.
pub fn pack(json: &[u8]) -> Vec<u8> {
    let Ok(len) = u32::try_from(json.len()) else {
        return json.to_vec();
    };
    let bound = lz4_flex::block::get_maximum_output_size(json.len());
    let mut out = vec![0u8; 5 + bound];
    out[0] = LZ4;
    out[1..5].copy_from_slice(&len.to_le_bytes());
    match lz4_flex::block::compress_into(json, &mut out[5..]) {
        Ok(n) if 5 + n < json.len() => {
            out.truncate(5 + n);
            out
        }
        _ => json.to_vec(),
    }
}

/// The JSON of a stored detail (either form).
pub fn unpack(stored: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, UnpackError> {
    match stored.first() {
        Some(b'{') => Ok(std::borrow::Cow::Borrowed(stored)),
        Some(&LZ4) => {
            let len = stored
                .get(1..5)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                .filter(|&n| n <= MAX_DETAIL_BYTES)
                .ok_or(UnpackError::BadLength)?;
            let mut out = vec![0u8; len];
            match lz4_flex::block::decompress_into(&stored[5..], &mut out) {
                Ok(n) if n == len => Ok(std::borrow::Cow::Owned(out)),
                _ => Err(UnpackError::Corrupt),
            }
        }
        _ => Err(UnpackError::UnknownFormat),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeline(actions: usize) -> Vec<u8> {
        let action = r#"{"index":0,"type":"xhr","name":"GET /api/cart","url":"https://shop.example.com/api/cart","start":1764126000000,"duration":120.0,"apdex":"satisfied","status":200}"#;
        let mut s = String::from(r#"{"actions":["#);
        for i in 0..actions {
            if i > 0 {
                s.push(',');
            }
            s.push_str(action);
        }
        s.push_str("]}");
        s.into_bytes()
    }

    #[test]
    fn a_timeline_round_trips_smaller() {
        let json = timeline(50);
        let stored = pack(&json);
        assert_eq!(stored[0], LZ4);
        assert!(stored.len() * 5 < json.len(), "{} of {}", stored.len(), json.len());
        assert_eq!(unpack(&stored).unwrap().as_ref(), json.as_slice());
    }

    #[test]
    fn what_does_not_shrink_is_stored_as_it_is() {
        let json = br#"{"actions":[]}"#;
        assert_eq!(pack(json), json.to_vec());
        assert_eq!(unpack(json).unwrap().as_ref(), json);
    }

    #[test]
    fn damaged_values_are_errors_not_panics() {
        let stored = pack(&timeline(20));
        assert_eq!(unpack(b""), Err(UnpackError::UnknownFormat));
        assert_eq!(unpack(b"[1]"), Err(UnpackError::UnknownFormat));
        assert_eq!(unpack(&[LZ4, 1, 0]), Err(UnpackError::BadLength));
        assert_eq!(unpack(&[LZ4, 0xff, 0xff, 0xff, 0xff, 0]), Err(UnpackError::BadLength));
        // a stated length the block does not fill, or overfills
        let mut short = stored.clone();
        short[1..5].copy_from_slice(&(u32::from_le_bytes([stored[1], stored[2], stored[3], stored[4]]) + 1).to_le_bytes());
        assert_eq!(unpack(&short), Err(UnpackError::Corrupt));
        let mut long = stored.clone();
        long[1..5].copy_from_slice(&10u32.to_le_bytes());
        assert_eq!(unpack(&long), Err(UnpackError::Corrupt));
        // every truncation and every single-byte change: an error or some bytes, never a panic
        for cut in 0..stored.len() {
            let _ = unpack(&stored[..cut]);
        }
        for i in 5..stored.len() {
            let mut bad = stored.clone();
            bad[i] ^= 0x5a;
            let _ = unpack(&bad);
        }
    }
}
