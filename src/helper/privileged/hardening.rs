//! The helper's first instructions. Nothing the caller hands over at exec —
//! arguments, environment, descriptors, umask, dumpability, capabilities — is
//! trusted; what is needed is copied out, the rest is reset or refused.

use anyhow::{bail, Context, Result};
use caps::{CapSet, Capability};
use std::ffi::{c_char, c_int, CStr};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Attach,
    Rescan,
    Detach,
}

impl Verb {
    pub const ALL: [Verb; 3] = [Verb::Attach, Verb::Rescan, Verb::Detach];

    pub fn name(self) -> &'static str {
        match self {
            Verb::Attach => "attach",
            Verb::Rescan => "rescan",
            Verb::Detach => "detach",
        }
    }
}

/// What exec handed over, copied before the environment is cleared.
pub struct Start {
    argv: Vec<Vec<u8>>,
    closed_fd: Option<c_int>,
    forbidden_env: Option<String>,
    env_unreadable: Option<String>,
    real_uid: u32,
    sudo_uid: Option<Vec<u8>>,
}

const NOT_PRIVILEGED: &str =
    "kiln-helper is not privileged: it must be installed setuid root or run through sudo \
                              (see README, \"Real block devices: kiln-helper\")";

impl Start {
    /// # Safety
    /// `argv` holds `argc` valid C strings, as the C runtime passes them to main.
    pub unsafe fn capture(argc: c_int, argv: *const *const c_char) -> Start {
        let argv: Vec<Vec<u8>> = (0..argc.max(0) as usize)
            .map(|i| unsafe { *argv.add(i) })
            .take_while(|p| !p.is_null())
            .map(|p| unsafe { CStr::from_ptr(p) }.to_bytes().to_vec())
            .collect();
        // Before anything is opened: a closed 0-2 would receive the next
        // descriptor, and a reply or a message would land in it.
        let closed_fd = (0..3).find(|&fd| was_closed(fd));
        while (0..3).any(|fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1) {
            if unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) } < 0 {
                std::process::abort();
            }
        }
        let real_uid = unsafe { libc::getuid() };
        // sudo says who asked; anyone else could set SUDO_UID, so only root's is heard.
        let sudo_uid = if real_uid == 0 {
            std::env::var_os("SUDO_UID").map(|v| v.into_encoded_bytes())
        } else {
            None
        };
        // Only an unprivileged caller's environment is refused. Under sudo (or
        // root) it is root's: sudo has already sanitised it, and PAM adds LANG
        // from /etc/default/locale on ordinary installs. It is cleared all the same.
        let (forbidden_env, env_unreadable) = match environment_names() {
            _ if real_uid == 0 => (None, None),
            // The name goes to logs: printable ASCII only.
            Ok(names) => (
                names.into_iter().find(|n| forbidden(n)).map(|n| {
                    n.iter()
                        .map(|&b| if b.is_ascii_graphic() { b as char } else { '?' })
                        .collect()
                }),
                None,
            ),
            Err(e) => (None, Some(e)),
        };
        unsafe {
            libc::clearenv();
            libc::umask(0o077);
            libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
            // A caller that closed its end, or set a file size limit, gets an
            // error the helper can undo its work after, not a silent death.
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        }
        Start {
            argv,
            closed_fd,
            forbidden_env,
            env_unreadable,
            real_uid,
            sudo_uid,
        }
    }

    /// Whose request this is: the real uid; under sudo (real uid 0), SUDO_UID.
    pub fn caller(&self) -> Result<u32> {
        let Some(v) = &self.sudo_uid else {
            return Ok(self.real_uid);
        };
        std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("SUDO_UID {:?} is not a uid", String::from_utf8_lossy(v)))
    }

    /// The requested verb, once the invocation passes every check.
    pub fn verb(&self) -> Result<Verb> {
        if self.argv.first().is_none_or(|a| a.is_empty()) {
            bail!("refusing to run with an empty argument list (argc 0)");
        }
        if let Some(fd) = self.closed_fd {
            bail!("file descriptor {fd} was not open: standard input, output and error must all be open");
        }
        if let Some(e) = &self.env_unreadable {
            bail!("cannot check the environment: {e}");
        }
        if let Some(name) = &self.forbidden_env {
            bail!("refusing to run with {name} in the environment");
        }
        let Some(word) = self.argv.get(1) else {
            bail!("no verb given: use attach, rescan or detach, with the object on standard input");
        };
        let Some(verb) = Verb::ALL
            .into_iter()
            .find(|v| v.name().as_bytes() == word.as_slice())
        else {
            bail!(
                "unknown verb {:?}: only attach, rescan and detach exist",
                String::from_utf8_lossy(word)
            );
        };
        if self.argv.len() > 2 {
            let extra: Vec<_> = self.argv[2..]
                .iter()
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            bail!("extra arguments refused: {extra:?}; the object comes on standard input, never as a path");
        }
        Ok(verb)
    }
}

/// Closed at exec. For a setuid program glibc has already put a stand-in on a
/// closed 0-2 before main: /dev/full write-only on 0, /dev/null read-only on 1
/// and 2; that is taken for what it replaced.
fn was_closed(fd: c_int) -> bool {
    // SAFETY: fcntl and fstat on a descriptor number; st is plain data.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fcntl(fd, libc::F_GETFD) == -1 || libc::fstat(fd, &mut st) != 0 {
            return true;
        }
        let access = libc::fcntl(fd, libc::F_GETFL) & libc::O_ACCMODE;
        let (node, stand_in_access) = if fd == 0 {
            (libc::makedev(1, 7), libc::O_WRONLY)
        } else {
            (libc::makedev(1, 3), libc::O_RDONLY)
        };
        st.st_mode & libc::S_IFMT == libc::S_IFCHR
            && st.st_rdev == node
            && access == stand_in_access
    }
}

/// Names from the environment array and from /proc/self/environ: in a setuid
/// program the dynamic loader has already unset LD_PRELOAD and its kind from
/// the array, but the kernel's copy still shows what the caller tried.
fn environment_names() -> Result<Vec<Vec<u8>>, String> {
    let mut names: Vec<Vec<u8>> = std::env::vars_os()
        .map(|(k, _)| k.into_encoded_bytes())
        .collect();
    let raw = std::fs::read("/proc/self/environ")
        .map_err(|e| format!("reading /proc/self/environ: {e}"))?;
    for entry in raw.split(|&b| b == 0).filter(|e| !e.is_empty()) {
        names.push(
            entry
                .split(|&b| b == b'=')
                .next()
                .unwrap_or_default()
                .to_vec(),
        );
    }
    Ok(names)
}

/// Variables that steer the loader, the allocator or locale loading: each has
/// been a way into a setuid program. Refused rather than ignored, so that the
/// attempt is logged.
fn forbidden(name: &[u8]) -> bool {
    ["LD_", "MALLOC_", "LC_"]
        .iter()
        .any(|p| name.starts_with(p.as_bytes()))
        || [
            &b"GLIBC_TUNABLES"[..],
            b"LANG",
            b"LANGUAGE",
            b"LOCPATH",
            b"NLSPATH",
            b"GCONV_PATH",
        ]
        .contains(&name)
}

/// Holding one: the process may use CAP_SYS_ADMIN (partition ioctls). Made once,
/// after every other capability is gone; dropping it gives the capability up.
pub struct Privileged {
    caller: u32,
}

/// Proof that CAP_SYS_ADMIN is gone: replies are sent only with one in hand.
pub struct Unprivileged {
    caller: u32,
}

impl Privileged {
    pub fn acquire(caller: u32) -> Result<Privileged> {
        let admin = Capability::CAP_SYS_ADMIN;
        if !caps::has_cap(None, CapSet::Permitted, admin).unwrap_or(false) {
            bail!("{NOT_PRIVILEGED}");
        }
        // A process whose real uid is the caller's can be stopped by the caller,
        // and a helper stopped while it holds a lock stalls every other user's.
        // All ids root (the caller was read at exec), none of the caller's groups.
        // SAFETY: plain system calls; CAP_SETUID and CAP_SETGID are still held.
        if unsafe {
            libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(0, 0, 0) != 0
                || libc::setresuid(0, 0, 0) != 0
        } {
            bail!(
                "{NOT_PRIVILEGED} (cannot become root: {})",
                std::io::Error::last_os_error()
            );
        }
        // The bounding set only matters at exec, which the helper never does;
        // clearing it all, CAP_SYS_ADMIN too, must happen while CAP_SETPCAP is held.
        caps::drop(None, CapSet::Bounding, admin)
            .context("dropping CAP_SYS_ADMIN from the bounding set")?;
        crate::sandbox::caps::restrict(&[admin].into_iter().collect())
            .context("dropping capabilities")?;
        let effective = caps::read(None, CapSet::Effective).context("reading capabilities")?;
        if effective.len() != 1 || !effective.contains(&admin) {
            bail!("{NOT_PRIVILEGED} (capabilities left: {effective:?})");
        }
        Ok(Privileged { caller })
    }

    pub fn caller(&self) -> u32 {
        self.caller
    }

    pub fn drop_to_unprivileged(self) -> Unprivileged {
        Unprivileged {
            caller: self.caller,
        }
    }
}

impl Drop for Privileged {
    fn drop(&mut self) {
        // Failing to give a capability up is not an error to report: stop here.
        if caps::clear(None, CapSet::Effective)
            .and_then(|_| caps::clear(None, CapSet::Permitted))
            .is_err()
        {
            std::process::abort();
        }
    }
}

impl Unprivileged {
    pub fn caller(&self) -> u32 {
        self.caller
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(args: &[&str]) -> Start {
        Start {
            argv: args.iter().map(|a| a.as_bytes().to_vec()).collect(),
            closed_fd: None,
            forbidden_env: None,
            env_unreadable: None,
            real_uid: 1000,
            sudo_uid: None,
        }
    }

    #[test]
    fn verbs_are_fixed() {
        assert_eq!(
            start(&["kiln-helper", "attach"]).verb().unwrap(),
            Verb::Attach
        );
        for (args, says) in [
            (&[][..], "argc 0"),
            (&[""][..], "argc 0"),
            (&["kiln-helper"][..], "no verb"),
            (&["kiln-helper", "mount"][..], "unknown verb"),
            (&["kiln-helper", "Attach"][..], "unknown verb"),
            (
                &["kiln-helper", "attach", "/tmp/image"][..],
                "extra arguments",
            ),
        ] {
            let e = start(args).verb().unwrap_err().to_string();
            assert!(e.contains(says), "{args:?}: {e}");
        }
    }

    #[test]
    fn loader_allocator_and_locale_variables_are_forbidden() {
        for n in [
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "LD_AUDIT",
            "GLIBC_TUNABLES",
            "MALLOC_CHECK_",
            "LANG",
            "LANGUAGE",
            "LC_ALL",
            "LC_CTYPE",
            "LOCPATH",
            "NLSPATH",
            "GCONV_PATH",
        ] {
            assert!(forbidden(n.as_bytes()), "{n}");
        }
        for n in ["PATH", "HOME", "SUDO_UID", "LANGX", "TERM"] {
            assert!(!forbidden(n.as_bytes()), "{n}");
        }
    }

    #[test]
    fn only_root_hears_sudo_uid() {
        let mut s = start(&["kiln-helper", "attach"]);
        assert_eq!(s.caller().unwrap(), 1000);
        s.real_uid = 0;
        s.sudo_uid = Some(b"1001".to_vec());
        assert_eq!(s.caller().unwrap(), 1001);
        s.sudo_uid = Some(b"1001 ".to_vec());
        assert!(s.caller().is_err());
    }
}
