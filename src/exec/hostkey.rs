//! Host-key policy. `accept-new` records unknown keys in the state's known_hosts and refuses a
//! changed key with both fingerprints; `strict` also refuses hosts not already known (in the
//! state or in ~/.ssh/known_hosts).

use std::path::PathBuf;

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::spec::HostKeyPolicy;
use crate::state::{KnownKey, StateHandle};

use super::ExecError;

/// OpenSSH-style fingerprint: `SHA256:<base64 without padding>`.
pub fn fingerprint(key: &[u8]) -> String {
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(Sha256::digest(key))
    )
}

pub struct HostKeyCheck {
    pub policy: HostKeyPolicy,
    pub state: StateHandle,
    /// The user's own known_hosts, consulted too (read-only).
    pub user_known_hosts: Option<PathBuf>,
    /// Record first-seen keys in the state (`up`, `down`); `plan` and `status` only accept
    /// them for the session and write nothing.
    pub record_new: bool,
}

pub enum Verdict {
    Known,
    /// New under accept-new: recorded.
    Recorded,
}

impl HostKeyCheck {
    /// Check the key a host offered; record it when new and the policy allows.
    pub fn check(
        &self,
        sess: &ssh2::Session,
        host: &str,
        address: &str,
        port: u16,
        key: &[u8],
        key_type: &str,
    ) -> Result<Verdict, ExecError> {
        let id = format!("{address}:{port}");
        let offered = fingerprint(key);
        let b64 = base64::engine::general_purpose::STANDARD.encode(key);
        if let Some(known) = self.state.snapshot().known_hosts.get(&id) {
            if known.key == b64 {
                return Ok(Verdict::Known);
            }
            let known_fp = base64::engine::general_purpose::STANDARD
                .decode(&known.key)
                .map(|k| fingerprint(&k))
                .unwrap_or_else(|_| "(unreadable record)".into());
            return Err(ExecError::HostKeyChanged {
                host: host.into(),
                address: id,
                known: format!("{} {known_fp}", known.key_type),
                offered: format!("{key_type} {offered}"),
            });
        }
        if let Some(path) = self.user_known_hosts.as_ref().filter(|p| p.is_file())
            && let Ok(mut kh) = sess.known_hosts()
            && kh.read_file(path, ssh2::KnownHostFileKind::OpenSSH).is_ok()
        {
            match kh.check_port(address, port, key) {
                ssh2::CheckResult::Match => return Ok(Verdict::Known),
                ssh2::CheckResult::Mismatch => {
                    return Err(ExecError::HostKeyChanged {
                        host: host.into(),
                        address: id,
                        known: format!("(a different key in {})", path.display()),
                        offered: format!("{key_type} {offered}"),
                    });
                }
                _ => {}
            }
        }
        if self.policy == HostKeyPolicy::Strict {
            return Err(ExecError::HostKeyUnknown {
                host: host.into(),
                address: id,
                offered: format!("{key_type} {offered}"),
            });
        }
        if !self.record_new {
            return Ok(Verdict::Recorded);
        }
        self.state
            .put_known_host(
                &id,
                KnownKey {
                    key_type: key_type.to_string(),
                    key: b64,
                },
            )
            .map_err(|e| ExecError::Local(format!("cannot record the host key of {host}: {e}")))?;
        Ok(Verdict::Recorded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_matches_openssh_format() {
        // ssh-keygen -lf prints SHA256 of the raw key blob, base64 without padding.
        let fp = fingerprint(b"abc");
        assert_eq!(fp, "SHA256:ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0");
    }
}
