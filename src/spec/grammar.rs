//! The grammars of the spec strings that reach a shell, a configuration file or a template.
//!
//! Every such string is checked here against what it is (a DNS name, a URL path, an image
//! reference, a proxy URL, ...) before anything is rendered; whatever a grammar still allows
//! (`$`, `'`, `;` or `%` in a proxy password, say) is escaped for each destination by the
//! renderer's filters (`sh`, `systemd`). Each function returns why a value is refused.

/// Bytes a URL may hold as written (RFC 3986 unreserved, reserved and `%`).
fn url_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~:/?#[]@!$&'()*+,;=%".contains(c)
}

fn percent_encodings_complete(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
            {
                return false;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    true
}

/// `http://[user:password@]host[:port][/]` — the proxy URLs for dockerd and apt.
pub fn proxy_url(s: &str) -> Result<(), String> {
    base_url(s, "a URL like http://proxy.corp:3128")?;
    let u =
        url::Url::parse(s).map_err(|e| format!("not a URL like http://proxy.corp:3128 ({e})"))?;
    if u.path() != "/" || u.query().is_some() || u.fragment().is_some() {
        return Err("a proxy URL has no path, query or fragment: http://proxy.corp:3128".into());
    }
    Ok(())
}

/// A URL with its `user:password@` part replaced by `***@`, for messages.
pub fn mask_userinfo(s: &str) -> String {
    match s.split_once("://") {
        Some((scheme, rest)) => match rest.rfind('@') {
            Some(at) => format!("{scheme}://***{}", &rest[at..]),
            None => s.to_string(),
        },
        None => match s.rfind('@') {
            Some(at) => format!("***{}", &s[at..]),
            None => s.to_string(),
        },
    }
}

/// `http(s)://host[:port][/path]` — registry mirrors.
pub fn mirror_url(s: &str) -> Result<(), String> {
    base_url(s, "a URL starting with http:// or https://")?;
    let u = url::Url::parse(s).map_err(|e| format!("not a URL ({e})"))?;
    if u.query().is_some() || u.fragment().is_some() || !u.username().is_empty() {
        return Err("a mirror URL has no credentials, query or fragment".into());
    }
    Ok(())
}

fn base_url(s: &str, what: &str) -> Result<(), String> {
    if let Some(c) = s.chars().find(|c| !url_char(*c)) {
        return Err(format!(
            "{c:?} cannot appear in a URL as written (percent-encode it, e.g. %20): {what}"
        ));
    }
    if !percent_encodings_complete(s) {
        return Err("a % must start a percent-encoding like %40".into());
    }
    let scheme_ok = s.starts_with("http://") || s.starts_with("https://");
    if !scheme_ok {
        return Err(format!("must be {what}"));
    }
    let u = url::Url::parse(s).map_err(|e| format!("not {what} ({e})"))?;
    if u.host_str().is_none_or(str::is_empty) {
        return Err(format!("no host: must be {what}"));
    }
    Ok(())
}

/// A DNS name (`demo.example.com`): labels of letters, digits and '-', at most 253 bytes.
pub fn dns_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 253 {
        return Err("a DNS name has 1 to 253 characters".into());
    }
    for label in s.split('.') {
        let b = label.as_bytes();
        if b.is_empty() || b.len() > 63 {
            return Err(format!(
                "{label:?} is not a DNS label (1 to 63 letters, digits and '-')"
            ));
        }
        if !b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
            || b[0] == b'-'
            || b[b.len() - 1] == b'-'
        {
            return Err(format!(
                "{label:?} is not a DNS label: letters, digits and '-', not starting or ending with '-'"
            ));
        }
    }
    Ok(())
}

/// A host as SSH and Swarm take it: a DNS name, an IPv4 or an IPv6 address.
pub fn host(s: &str) -> Result<(), String> {
    if s.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    dns_name(s).map_err(|e| format!("not an IP address or a host name: {e}"))
}

/// `host[:port]` or a CIDR — `registry.insecure` entries and `registry.auth.server`.
pub fn registry_host(s: &str) -> Result<(), String> {
    if let Some((ip, prefix)) = s.split_once('/') {
        let ok = ip.parse::<std::net::IpAddr>().is_ok()
            && prefix.parse::<u8>().is_ok_and(|p| p <= 128)
            && !prefix.starts_with('+');
        return if ok {
            Ok(())
        } else {
            Err("not a CIDR like 10.0.0.0/8 nor a host[:port] like reg.local:5000".into())
        };
    }
    let (h, port) = split_port(s);
    if let Some(p) = port
        && (p.is_empty() || !p.bytes().all(|c| c.is_ascii_digit()) || p.parse::<u16>().is_err())
    {
        return Err(format!("{p:?} is not a port number"));
    }
    let h = h
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(h);
    host(h).map_err(|e| format!("{e} (a host[:port] like reg.local:5000)"))
}

fn split_port(s: &str) -> (&str, Option<&str>) {
    if let Some(rest) = s.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((_, tail)) => match tail.strip_prefix(':') {
                Some(p) => (&s[..s.len() - tail.len()], Some(p)),
                None => (s, None),
            },
            None => (s, None),
        };
    }
    if s.parse::<std::net::Ipv6Addr>().is_ok() {
        return (s, None);
    }
    match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    }
}

/// A `no_proxy` entry: a host, `.domain`, `*`, an IP or a CIDR, with an optional port.
pub fn no_proxy_entry(s: &str) -> Result<(), String> {
    if s == "*" {
        return Ok(());
    }
    let bare = s
        .strip_prefix('.')
        .or_else(|| s.strip_prefix("*."))
        .unwrap_or(s);
    registry_host(bare).map_err(|_| {
        format!(
            "{s:?} is not a no_proxy entry (a host, .domain, IP or CIDR, like .corp or 10.0.0.0/8)"
        )
    })
}

/// A URL path for the health check: `/`, then RFC 3986 path and query characters, without the
/// ones that mean something to nginx or a shell (`;`, `$`, `{`, `}`, quotes, `#`).
pub fn url_path(s: &str) -> Result<(), String> {
    if !s.starts_with('/') {
        return Err("must start with /".into());
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-._~/!*+,=:@%?&".contains(*c)))
    {
        return Err(format!(
            "{c:?} is not allowed in a health path (letters, digits and -._~/!*+,=:@?&, or percent-encoding like %20)"
        ));
    }
    if !percent_encodings_complete(s) {
        return Err("a % must start a percent-encoding like %20".into());
    }
    if s.len() > 1024 {
        return Err("longer than 1024 characters".into());
    }
    Ok(())
}

/// An environment variable name: a letter or `_`, then letters, digits, `_`, `.` or `-`.
pub fn env_name(s: &str) -> Result<(), String> {
    let b = s.as_bytes();
    let ok = !b.is_empty()
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err("an environment variable name starts with a letter or _ and holds letters, digits, _, . and -".into())
    }
}

/// A container image reference, as Docker's reference grammar has it:
/// `[registry[:port]/]path[:tag][@algorithm:hex]`.
pub fn image(s: &str) -> Result<(), String> {
    const HINT: &str = "an image like reg.local:5000/team/web:1.2 or web@sha256:<64 hex>";
    if s.is_empty() || s.len() > 512 {
        return Err(format!("must be {HINT}"));
    }
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (s, None),
    };
    if let Some(d) = digest {
        let Some((alg, hex)) = d.split_once(':') else {
            return Err(format!("digest {d:?} is not algorithm:hex ({HINT})"));
        };
        let alg_ok = !alg.is_empty()
            && alg.split(['+', '.', '_', '-']).all(|c| {
                !c.is_empty()
                    && c.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            });
        if !alg_ok || hex.len() < 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("digest {d:?} is not algorithm:hex ({HINT})"));
        }
    }
    // The tag follows the last ':' after the last '/'.
    let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(t) = tag {
        let b = t.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 128
            && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c));
        if !ok {
            return Err(format!(
                "tag {t:?}: letters, digits, _ . - (at most 128); {HINT}"
            ));
        }
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    let first = parts[0];
    if parts.len() > 1
        && (first.contains('.')
            || first.contains(':')
            || first == "localhost"
            || first.bytes().any(|b| b.is_ascii_uppercase()))
    {
        registry_host(first).map_err(|e| format!("registry {first:?}: {e}; {HINT}"))?;
        if first.contains('/') {
            return Err(format!("registry {first:?}; {HINT}"));
        }
        parts.remove(0);
    }
    for p in parts {
        if !path_component(p) {
            return Err(format!(
                "{p:?} is not an image path component (lowercase letters and digits, joined by . _ __ or -); {HINT}"
            ));
        }
    }
    Ok(())
}

fn path_component(p: &str) -> bool {
    let b = p.as_bytes();
    if b.is_empty() || !b[0].is_ascii_lowercase() && !b[0].is_ascii_digit() {
        return false;
    }
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !alnum(&b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(&b[i]) {
            i += 1;
            continue;
        }
        // A separator: `.`, `_`, `__` or a run of `-`.
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if b.get(i) == Some(&b'_') {
                    i += 1;
                }
            }
            b'-' => {
                while b.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || !b.get(i).is_some_and(alnum) {
            return false;
        }
    }
    true
}

/// A user name or similar free text that goes in argv: printable, no whitespace.
pub fn token(s: &str) -> Result<(), String> {
    if s.is_empty() || s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("must be non-empty, without spaces or control characters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_follow_the_reference_grammar() {
        for ok in [
            "web",
            "web:1",
            "team/web:1.2-rc_1",
            "reg.local:5000/team/web:2",
            "localhost/web",
            "10.0.0.5:5000/web",
            "[::1]:5000/web:1",
            "reg:5000/web@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "reg:5000/web:1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "a__b/c--d/e.f_g",
        ] {
            assert_eq!(image(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "Web",
            "web:",
            "web:-1",
            "web;rm",
            "web\nx",
            "web:1 x",
            "web{",
            "reg:5000/web@sha256:short",
            "-web",
            "web-",
            "a___b",
            "reg:notaport/web",
            "web@",
        ] {
            assert!(image(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn proxy_urls_dns_names_paths() {
        assert_eq!(proxy_url("http://proxy.corp:3128"), Ok(()));
        assert_eq!(proxy_url("http://u:p%40ss$(x)@proxy.corp:3128/"), Ok(()));
        for bad in [
            "proxy.corp:3128",
            "ftp://p:1",
            "http://p:1/path",
            "http://p:1\n",
            "http://p:1\"",
            "http://p: 1",
            "http://p`id`:1",
            "http://%zz@p:1",
            "http://",
        ] {
            assert!(proxy_url(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(dns_name("demo.example-1.test"), Ok(()));
        for bad in ["", "a..b", "-a.b", "a;b", "a b", "a{", "x.-y"] {
            assert!(dns_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(url_path("/healthz?full=1&x=%20"), Ok(()));
        for bad in [
            "healthz", "/a;b", "/a b", "/$x", "/a{", "/a%zz", "/a#b", "/a'",
        ] {
            assert!(url_path(bad).is_err(), "{bad:?}");
        }
        for ok in ["reg:5000", "10.0.0.0/8", "reg.local", "[::1]:5000", "::1"] {
            assert_eq!(registry_host(ok), Ok(()), "{ok}");
        }
        for bad in ["reg:50000000", "reg:", "a b", "10.0.0.0/x", "reg;x:1"] {
            assert!(registry_host(bad).is_err(), "{bad:?}");
        }
        for ok in [
            "*",
            ".corp",
            "localhost",
            "10.0.0.0/8",
            "*.corp",
            "reg:5000",
        ] {
            assert_eq!(no_proxy_entry(ok), Ok(()), "{ok}");
        }
        assert!(no_proxy_entry("a,b").is_err());
        assert!(env_name("SPRING_PROFILES.active").is_ok());
        assert!(env_name("1X").is_err() && env_name("A=B").is_err() && env_name("A B").is_err());
    }
}
