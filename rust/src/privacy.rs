//! IP masking and PII scrubbing, applied before anything is stored.
use regex::Regex;
use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
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
        let o = a.octets();
        return Some(Ipv4Addr::new(o[0], o[1], o[2], 0).to_string());
    }
    let IpAddr::V6(a) = parsed else { unreachable!() };
    let s = a.segments();
    // keep the first 48 bits (three segments), zero the last 80
    Some(Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0).to_string())
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
        let may_have_email = text.contains('@') || text.contains("%40");
        let may_have_digit_run = text.bytes().filter(u8::is_ascii_digit).count() >= 9;
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
