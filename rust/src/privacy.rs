//! IP masking and PII scrubbing, applied before anything is stored.
use regex::Regex;
use std::borrow::Cow;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::OnceLock;

/// What scrubbed text is replaced with.
pub const MASK: &str = "<masked>";

/// Masks the last IPv4 octet or the last 80 bits of an IPv6 address. An IPv4-mapped IPv6
/// address is treated as IPv4. `None` when the text is not an IP address.
pub fn mask_ip(ip: &str) -> Option<String> {
    let parsed: IpAddr = ip.trim().parse().ok()?;
    let v4 = match parsed {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(a) => a.to_ipv4_mapped(),
    };
    if let Some(a) = v4 {
        // written by hand: formatting through `Display` was most of the cost per record
        let mut out = String::with_capacity(15);
        for octet in &a.octets()[..3] {
            push_decimal(&mut out, *octet);
            out.push('.');
        }
        out.push('0');
        return Some(out);
    }
    let IpAddr::V6(a) = parsed else { unreachable!() };
    let s = a.segments();
    // keep the first 48 bits (three segments), zero the last 80
    Some(Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0).to_string())
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The high bit of every byte of `w` that is an ASCII digit (exact: no carry crosses bytes).
fn digit_bytes(w: u64) -> u64 {
    // "has a byte between m and n" from Bit Twiddling Hacks, m = b'0' - 1, n = b'9' + 1
    let low = w & (ONES * 127);
    (ONES * (127 + u64::from(b'9' + 1)) - low) & !w & (low + ONES * (127 - u64::from(b'0' - 1))) & HIGH
}

fn has_byte(w: u64, b: u8) -> bool {
    let x = w ^ (ONES * u64::from(b));
    x.wrapping_sub(ONES) & !x & HIGH != 0
}

/// The number of ASCII digits in `text` and whether it has an '@' or a '%', 8 bytes at a time:
/// the pre-checks of `scrub`, run on every URL, name and message.
fn digits_and_at(text: &[u8]) -> (u32, bool) {
    let (mut digits, mut at) = (0, false);
    let mut words = text.chunks_exact(8);
    for w in &mut words {
        let w = u64::from_le_bytes(w.try_into().expect("8 bytes"));
        digits += digit_bytes(w).count_ones();
        at |= has_byte(w, b'@') || has_byte(w, b'%');
    }
    for &b in words.remainder() {
        digits += u32::from(b.is_ascii_digit());
        at |= b == b'@' || b == b'%';
    }
    (digits, at)
}

fn push_decimal(out: &mut String, n: u8) {
    if n >= 100 {
        out.push(char::from(b'0' + n / 100));
    }
    if n >= 10 {
        out.push(char::from(b'0' + n / 10 % 10));
    }
    out.push(char::from(b'0' + n % 10));
}

fn builtin_patterns() -> &'static [Regex; 2] {
    static P: OnceLock<[Regex; 2]> = OnceLock::new();
    P.get_or_init(|| {
        [
            Regex::new(r"[A-Za-z0-9._%+-]+(?:@|%40)[A-Za-z0-9.-]+\.[A-Za-z]{2,}").unwrap(),
            // card numbers (with spaces or dashes) and any other run of 9+ digits
            Regex::new(r"[0-9](?:[ -]?[0-9]){8,}").unwrap(),
        ]
    })
}

/// Replaces e-mail addresses, card numbers, long digit runs and configured patterns.
#[derive(Debug, Clone, Default)]
pub struct Scrubber {
    enabled: bool,
    extra: Vec<Regex>,
}

impl Scrubber {
    pub fn new(enabled: bool, patterns: &[String]) -> Result<Self, String> {
        let extra = patterns
            .iter()
            .map(|p| Regex::new(p).map_err(|e| format!("scrub_patterns: {p:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Scrubber { enabled, extra })
    }

    /// The text with every match replaced; borrowed when nothing matched.
    pub fn scrub<'a>(&self, text: &'a str) -> Cow<'a, str> {
        if !self.enabled {
            return Cow::Borrowed(text);
        }
        let mut out = Cow::Borrowed(text);
        // cheap pre-checks: most URLs and messages have neither '@' nor 9 digits, which every
        // match of the first and of the second pattern needs
        let (digits, at_or_percent) = digits_and_at(text.as_bytes());
        let may_have_email = at_or_percent && (text.contains('@') || text.contains("%40"));
        let may_have_digit_run = digits >= 9;
        for (re, may_match) in builtin_patterns().iter().zip([may_have_email, may_have_digit_run]) {
            if !may_match {
                continue;
            }
            if let Cow::Owned(s) = re.replace_all(&out, MASK) {
                out = Cow::Owned(s);
            }
        }
        for re in &self.extra {
            if let Cow::Owned(s) = re.replace_all(&out, MASK) {
                out = Cow::Owned(s);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_ipv4_last_octet() {
        assert_eq!(mask_ip("203.0.113.42").as_deref(), Some("203.0.113.0"));
    }

    #[test]
    fn the_pre_checks_count_digits_and_find_at_signs_exactly() {
        for b in 0..=255u8 {
            for at in 0..9 {
                let mut text = b"x1y2z3w4v5".to_vec();
                text.insert(at, b);
                let digits = text.iter().filter(|c| c.is_ascii_digit()).count() as u32;
                let has_at = text.iter().any(|c| *c == b'@' || *c == b'%');
                assert_eq!(digits_and_at(&text), (digits, has_at), "byte {b} at {at}");
            }
        }
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(digits_and_at(&all), (10, true));
    }

    #[test]
    fn masks_every_ipv4_as_display_would() {
        for n in 0..=255u8 {
            let ip = format!("{n}.{}.{n}.9", 255 - n);
            assert_eq!(mask_ip(&ip).unwrap(), std::net::Ipv4Addr::new(n, 255 - n, n, 0).to_string());
        }
    }

    #[test]
    fn masks_ipv6_last_80_bits() {
        assert_eq!(mask_ip("2001:db8:85a3:8d3:1319:8a2e:370:7348").as_deref(), Some("2001:db8:85a3::"));
        assert_eq!(mask_ip("::ffff:10.1.2.3").as_deref(), Some("10.1.2.0"));
    }

    #[test]
    fn rejects_non_ip() {
        assert_eq!(mask_ip("not-an-ip"), None);
        assert_eq!(mask_ip(""), None);
    }

    #[test]
    fn scrubs_emails_cards_and_digit_runs() {
        let s = Scrubber::new(true, &[]).unwrap();
        assert_eq!(s.scrub("/u/daniel.adams@example.com/x"), "/u/<masked>/x");
        assert_eq!(s.scrub("/u/daniel%40example.com"), "/u/<masked>");
        assert_eq!(s.scrub("card 4111 1111 1111 1111 ok"), "card <masked> ok");
        assert_eq!(s.scrub("/order/123456789"), "/order/<masked>");
        assert_eq!(s.scrub("/order/12345678"), "/order/12345678");
    }

    #[test]
    fn scrubbing_can_be_off_and_extended() {
        assert_eq!(Scrubber::new(false, &[]).unwrap().scrub("a@b.io"), "a@b.io");
        let s = Scrubber::new(true, &["token=[a-z]+".into()]).unwrap();
        assert_eq!(s.scrub("/x?token=abc"), "/x?<masked>");
        assert!(Scrubber::new(true, &["(".into()]).is_err());
    }
}
