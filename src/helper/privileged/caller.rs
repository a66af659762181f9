//! The process an attachment is for: the one that made the reply socket, which
//! must be an ancestor of the helper (its parent when the helper is setuid;
//! sudo's parent, or its pty monitor's grandparent, through sudo). It is held
//! as a pidfd: unlike a process number, that names this process and never a
//! later one given the same number.

use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};

pub struct Caller {
    pub pid: i32,
    pub pidfd: OwnedFd,
}

/// Ancestors looked at: the parent, and sudo's one or two processes above it.
const GENERATIONS: usize = 3;

pub fn find(sock: BorrowedFd) -> Result<Caller> {
    let pid = getsockopt(&sock, PeerCredentials)
        .context("cannot ask the reply socket which process made it")?
        .pid();
    if pid <= 0 {
        bail!("the process that made the reply socket is not visible to kiln-helper (is it in another PID namespace?)");
    }
    // SAFETY: pidfd_open takes a process number and flags, and returns a new descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        bail!(
            "the process that made the reply socket ({pid}) is gone: {}",
            Errno::last().desc()
        );
    }
    // SAFETY: a new descriptor that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // An ancestor is older than the helper and alive when seen below, so the
    // number was already its own when the pidfd was taken: the pidfd names it.
    let parent = nix::unistd::getppid().as_raw();
    let mut p = parent;
    for _ in 0..GENERATIONS {
        if p == pid {
            // Reparented meanwhile: the chain just read may be someone else's.
            if nix::unistd::getppid().as_raw() != parent {
                bail!("the process that ran kiln-helper went away");
            }
            return Ok(Caller { pid, pidfd });
        }
        match parent_of(p) {
            Ok(pp) if pp > 1 => p = pp,
            _ => break,
        }
    }
    bail!(
        "the reply socket was made by process {pid}, which is not the process that ran kiln-helper \
         (its parent, or sudo's): run kiln-helper from the process that keeps the other end of its standard output"
    )
}

/// The parent's number, from /proc/PID/stat (after the command name, which may hold anything).
fn parent_of(pid: i32) -> Result<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    ppid_in(&stat).ok_or_else(|| anyhow!("/proc/{pid}/stat names no parent"))
}

fn ppid_in(stat: &str) -> Option<i32> {
    let fields = stat.rsplit_once(')')?.1;
    fields.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parent_is_read_past_an_odd_command_name() {
        assert_eq!(ppid_in("4242 (a) S 9 (b) R 77 4242 4242 0 -1"), Some(77));
        assert_eq!(ppid_in("4242 (no end"), None);
        assert_eq!(
            parent_of(std::process::id() as i32).unwrap(),
            nix::unistd::getppid().as_raw()
        );
    }
}
