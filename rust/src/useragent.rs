//! User-agent parsing with the uap-core regex set (vendored with its licence in
//! `rust/data/uap-core`, parsed by the uap project's own Rust crate), cached per string.
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

static REGEXES: &str = include_str!("../data/uap-core/regexes.yaml");

fn extractor() -> &'static ua_parser::Extractor<'static> {
    static E: OnceLock<ua_parser::Extractor<'static>> = OnceLock::new();
    E.get_or_init(|| {
        let regexes: ua_parser::Regexes<'static> =
            serde_yaml::from_str(REGEXES).expect("vendored uap-core regexes.yaml parses");
        ua_parser::Extractor::try_from(regexes).expect("vendored uap-core regexes compile")
    })
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Software {
    pub family: String,
    pub version: Option<String>,
}

/// What a session's user agent says about the browser, OS and device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserAgent {
    pub browser: Software,
    pub os: Software,
    pub device_type: &'static str,
    pub robot: bool,
}

fn version(parts: [Option<&str>; 3]) -> Option<String> {
    let kept: Vec<&str> = parts.into_iter().map_while(|p| p.filter(|s| !s.is_empty())).collect();
    (!kept.is_empty()).then(|| kept.join("."))
}

const MOBILE_OS: [&str; 6] = ["iOS", "Android", "Windows Phone", "BlackBerry OS", "KaiOS", "Firefox OS"];

/// Parses one user agent (uncached).
pub fn parse(ua: &str) -> UserAgent {
    let (b, o, d) = extractor().extract(ua);
    let browser = b.map_or_else(
        || Software { family: "Other".into(), version: None },
        |b| Software { family: b.family.to_string(), version: version([b.major, b.minor, b.patch]) },
    );
    let os = o.map_or_else(
        || Software { family: "Other".into(), version: None },
        |o| Software {
            family: o.os.to_string(),
            version: version([o.major.as_deref(), o.minor.as_deref(), o.patch.as_deref()]),
        },
    );
    let device_family = d.as_ref().map_or("Other", |d| &*d.device);
    // uap-core marks crawlers with the device family "Spider"
    let robot = device_family == "Spider";
    // uap-core names devices, not form factors: the form factor follows the UA conventions
    // (iPad and Android without "Mobile" are tablets; mobile OSes and "Mobi" are phones).
    let device_type = if robot {
        "bot"
    } else if device_family == "iPad"
        || ua.contains("Tablet")
        || (os.family == "Android" && !ua.contains("Mobile"))
    {
        "tablet"
    } else if MOBILE_OS.contains(&os.family.as_str()) || ua.contains("Mobi") {
        "mobile"
    } else {
        "desktop"
    };
    UserAgent { browser, os, device_type, robot }
}

/// A bounded cache: a site has few distinct user agents; when full it starts over. Keyed by
/// foldhash with a random seed (the agents come from clients; see `intern::HashState`).
#[derive(Debug, Default)]
pub struct UaCache {
    capacity: usize,
    map: HashMap<Box<str>, Arc<UserAgent>, crate::intern::HashState>,
}

impl UaCache {
    pub fn new(capacity: usize) -> Self {
        UaCache { capacity: capacity.max(1), map: HashMap::default() }
    }

    pub fn get(&mut self, ua: &str) -> Arc<UserAgent> {
        if let Some(hit) = self.map.get(ua) {
            return Arc::clone(hit);
        }
        if self.map.len() >= self.capacity {
            self.map.clear();
        }
        let parsed = Arc::new(parse(ua));
        self.map.insert(ua.into(), Arc::clone(&parsed));
        parsed
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROME: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36";
    const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1";
    const IPAD: &str = "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1";
    const GOOGLEBOT: &str = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";

    #[test]
    fn chrome_on_linux_is_desktop() {
        let u = parse(CHROME);
        assert_eq!(u.browser.family, "Chrome");
        assert_eq!(u.browser.version.as_deref(), Some("156.0.0"));
        assert_eq!(u.os.family, "Linux");
        assert_eq!(u.device_type, "desktop");
        assert!(!u.robot);
    }

    #[test]
    fn iphone_is_mobile_and_ipad_is_tablet() {
        let p = parse(IPHONE);
        assert_eq!((p.browser.family.as_str(), p.os.family.as_str(), p.device_type), ("Mobile Safari", "iOS", "mobile"));
        assert_eq!(p.os.version.as_deref(), Some("17.4"));
        assert_eq!(parse(IPAD).device_type, "tablet");
    }

    #[test]
    fn googlebot_is_a_robot() {
        let g = parse(GOOGLEBOT);
        assert!(g.robot);
        assert_eq!(g.device_type, "bot");
    }

    #[test]
    fn empty_and_garbage_agents_are_other() {
        let e = parse("");
        assert_eq!(e.browser.family, "Other");
        assert_eq!(e.device_type, "desktop");
        assert_eq!(parse("\u{0}\u{ffff}((((").browser.family, "Other");
    }

    #[test]
    fn cache_is_bounded() {
        let mut c = UaCache::new(2);
        c.get(CHROME);
        c.get(IPHONE);
        assert_eq!(c.len(), 2);
        c.get(IPAD);
        assert_eq!(c.len(), 1);
        assert_eq!(c.get(CHROME).browser.family, "Chrome");
    }
}
