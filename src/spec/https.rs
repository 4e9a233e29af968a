//! `proxy.https:` — HTTPS on the reverse proxy: certificates from an ACME CA (HTTP-01, any
//! RFC 8555 directory) or from files.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{Location, SpecError, expand_path};

#[derive(Debug, Clone, PartialEq)]
pub struct HttpsSpec {
    pub port: u16,
    pub source: CertSource,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CertSource {
    Acme(AcmeSpec),
    Files(Vec<CertFiles>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct AcmeSpec {
    /// The CA's directory URL.
    pub directory: String,
    pub email: Option<String>,
    /// Trust for a private ACME server's own TLS (its directory's certificate).
    pub ca_file: Option<PathBuf>,
    /// How long one request to the CA may take (`timeout: 60s`).
    pub timeout: std::time::Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CertFiles {
    /// Host names it serves: exact (`web-default.example.com`) or one-label wildcards
    /// (`*.example.com`).
    pub hosts: Vec<String>,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl CertFiles {
    pub fn covers(&self, host: &str) -> bool {
        covers(&self.hosts, host)
    }
}

/// Whether a certificate for `names` serves `host` (`*.example.com` covers one label).
pub fn covers(names: &[String], host: &str) -> bool {
    names.iter().any(|h| match h.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(first, rest)| !first.is_empty() && rest == suffix),
        None => h == host,
    })
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttps {
    port: Option<u16>,
    #[schemars(with = "Option<RawAcme>")]
    acme: Option<Spanned<RawAcme>>,
    #[schemars(with = "Option<Vec<RawCertFiles>>")]
    certificates: Option<Spanned<Vec<RawCertFiles>>>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawAcme {
    #[schemars(with = "String")]
    directory: Spanned<String>,
    email: Option<String>,
    #[schemars(with = "Option<String>")]
    ca_file: Option<Spanned<String>>,
    /// How long one request to the CA may take before the order fails (default 60s).
    #[schemars(with = "Option<String>")]
    timeout: Option<Spanned<String>>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawCertFiles {
    hosts: Vec<String>,
    #[schemars(with = "String")]
    cert_file: Spanned<String>,
    #[schemars(with = "String")]
    key_file: Spanned<String>,
}

pub(super) fn parse(
    raw: RawHttps,
    at_https: Location,
    base: &Path,
    at: &dyn Fn(Location, String) -> SpecError,
) -> Result<HttpsSpec, SpecError> {
    let source = match (raw.acme, raw.certificates) {
        (Some(a), None) => {
            let d = &a.value.directory;
            match url::Url::parse(&d.value) {
                Ok(u) if u.scheme() == "https" => {}
                _ => {
                    return Err(at(
                        Location::of(d),
                        format!(
                            "proxy.https.acme.directory must be an https:// URL (an RFC 8555 directory), not {:?}",
                            d.value
                        ),
                    ));
                }
            }
            let ca_file = match &a.value.ca_file {
                Some(f) => {
                    let p = expand_path(&f.value, base);
                    if !p.is_file() {
                        return Err(at(
                            Location::of(f),
                            format!("proxy.https.acme.ca_file {} does not exist", p.display()),
                        ));
                    }
                    Some(p)
                }
                None => None,
            };
            let timeout = match &a.value.timeout {
                Some(t) => super::services::parse_duration(&t.value)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| {
                        at(
                            Location::of(t),
                            format!(
                                "proxy.https.acme.timeout: expected a duration (30s, 2m), not {:?}",
                                t.value
                            ),
                        )
                    })?,
                None => std::time::Duration::from_secs(60),
            };
            CertSource::Acme(AcmeSpec {
                directory: d.value.clone(),
                email: a.value.email.clone(),
                ca_file,
                timeout,
            })
        }
        (None, Some(list)) => {
            let mut out = Vec::new();
            for c in &list.value {
                let mut files = Vec::new();
                for f in [&c.cert_file, &c.key_file] {
                    let p = expand_path(&f.value, base);
                    if !p.is_file() {
                        return Err(at(
                            Location::of(f),
                            format!("{} does not exist", p.display()),
                        ));
                    }
                    files.push(p);
                }
                if c.hosts.is_empty() {
                    return Err(at(
                        Location::of(&list),
                        "a certificate names its hosts (hosts: [\"*.example.com\"])".into(),
                    ));
                }
                out.push(CertFiles {
                    hosts: c.hosts.clone(),
                    cert_file: files.remove(0),
                    key_file: files.remove(0),
                });
            }
            CertSource::Files(out)
        }
        (Some(_), Some(_)) => {
            return Err(at(
                at_https,
                "proxy.https takes either acme: or certificates:, not both".into(),
            ));
        }
        (None, None) => {
            return Err(at(
                at_https,
                "proxy.https needs acme: (a CA's directory) or certificates: (files)".into(),
            ));
        }
    };
    Ok(HttpsSpec {
        port: raw.port.unwrap_or(443),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_one_label() {
        let c = CertFiles {
            hosts: vec!["*.example.com".into(), "apex.example.org".into()],
            cert_file: "c".into(),
            key_file: "k".into(),
        };
        assert!(c.covers("web-default.example.com"));
        assert!(!c.covers("a.b.example.com"));
        assert!(!c.covers("example.com"));
        assert!(c.covers("apex.example.org"));
    }
}
