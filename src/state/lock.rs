//! The cluster lock's holder: who, where, which command, since when. Both stores record it
//! with the lock, so a refused command can name the holder.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Holder {
    pub user: String,
    pub host: String,
    pub pid: u32,
    pub command: String,
    /// RFC 3339.
    pub since: String,
}

impl Holder {
    /// This process, running `command`.
    pub fn current(command: &str) -> Holder {
        Holder {
            user: user_name(),
            host: host_name(),
            pid: std::process::id(),
            command: command.to_string(),
            since: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        }
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}@{} (pid {}, `{}`, since {})",
            self.user, self.host, self.pid, self.command, self.since
        )
    }
}

/// A held lock as another process sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LockInfo {
    pub holder: Holder,
    /// Seconds until the holder's lease expires unless renewed (etcd); `None` where the
    /// operating system releases the lock when the holder exits (embedded).
    pub lease_left_secs: Option<i64>,
}

impl std::fmt::Display for LockInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.holder)?;
        if let Some(s) = self.lease_left_secs {
            write!(f, ", lease {s}s left unless renewed")?;
        }
        Ok(())
    }
}

/// Held for the duration of a command; dropping it releases the cluster.
pub struct StateLock {
    _guard: Box<dyn Send + Sync>,
}

impl StateLock {
    pub fn new(guard: impl Send + Sync + 'static) -> Self {
        StateLock {
            _guard: Box::new(guard),
        }
    }
}

fn user_name() -> String {
    for var in ["USER", "LOGNAME"] {
        if let Ok(u) = std::env::var(var)
            && !u.is_empty()
        {
            return u;
        }
    }
    // SAFETY: getuid has no preconditions; getpwuid returns NULL or a pointer to a static
    // record whose pw_name is a NUL-terminated string, read at once (no other thread of this
    // process calls getpwuid).
    unsafe {
        let uid = libc::getuid();
        let pw = libc::getpwuid(uid);
        if !pw.is_null()
            && !(*pw).pw_name.is_null()
            && let Ok(name) = std::ffi::CStr::from_ptr((*pw).pw_name).to_str()
        {
            return name.to_string();
        }
        format!("uid{uid}")
    }
}

fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it or
    // truncates, and we stop at the first NUL.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc == 0 {
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        if let Ok(h) = std::str::from_utf8(&buf[..end])
            && !h.is_empty()
        {
            return h.to_string();
        }
    }
    "unknown-host".into()
}
