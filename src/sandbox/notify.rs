//! One seccomp user-notification filter per job, answered by the job's PID 1.
//!
//! The kernel allows a single listener in a process's filter stack, so device
//! lending (`lend`) and owner recording (`owners`) share one filter and one
//! loop: each contributes rules, and the loop hands every notification to the
//! part that asked for its system call.

use super::lend::{self, Lend};
use super::owners;
use libseccomp::{ScmpAction, ScmpFilterContext, ScmpNotifReq, ScmpNotifResp, ScmpNotifRespFlags};
use nix::errno::Errno;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// How a notification is answered.
pub enum Answer {
    /// Not ours: the kernel performs the call as if nothing intercepted it.
    Continue,
    Fd {
        fd: OwnedFd,
        cloexec: bool,
    },
    Value(i64),
    Error(Errno),
}

/// What a job's supervisor does for it.
#[derive(Clone, Copy, Default)]
pub struct Duties<'a> {
    pub lend: Option<&'a Lend<'a>>,
    /// Record chown as owners, answer stat with them (no subordinate ids).
    pub owners: bool,
}

impl Duties<'_> {
    pub fn any(&self) -> bool {
        self.lend.is_some() || self.owners
    }
}

/// The job's notification filter, loaded before kiln's own filter: it only
/// diverts the calls its duties name; the kernel rules on the rest.
pub fn filter(d: &Duties) -> Result<ScmpFilterContext, libseccomp::error::SeccompError> {
    let mut ctx = ScmpFilterContext::new(ScmpAction::Allow)?;
    // Other ABIs are kiln's main filter's business, not this one's.
    ctx.set_act_badarch(ScmpAction::Allow)?;
    if d.lend.is_some() {
        lend::add_rules(&mut ctx)?;
    }
    if d.owners {
        owners::add_rules(&mut ctx)?;
    }
    Ok(ctx)
}

/// PID 1 of the job: answers notifications until `job` exits; returns its exit
/// code. `say` reaches the job's output.
pub fn supervise(listener: OwnedFd, job: nix::unistd::Pid, d: &Duties, say: &dyn Fn(&str)) -> i32 {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let mut lending = d.lend.map(lend::Lending::new);
    let mut recording = if d.owners {
        match owners::Recorder::new() {
            Ok(r) => Some(r),
            Err(e) => {
                say(&format!("kiln: cannot record owners: {e}"));
                return 125;
            }
        }
    } else {
        None
    };
    let mut listening = true;
    loop {
        loop {
            let flags = if listening {
                Some(WaitPidFlag::WNOHANG)
            } else {
                None
            };
            match waitpid(None, flags) {
                Ok(WaitStatus::Exited(pid, code)) if pid == job => return code,
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == job => return 128 + sig as i32,
                Ok(WaitStatus::StillAlive) => break,
                Ok(_) | Err(Errno::EINTR) => {}
                Err(_) => return 255,
            }
        }
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd. (50 ms: reaping the job is polled too.)
        match unsafe { libc::poll(&mut pfd, 1, 50) } {
            0 => continue,
            n if n < 0 => {
                if Errno::last() != Errno::EINTR {
                    listening = false;
                }
                continue;
            }
            _ => {}
        }
        if pfd.revents & libc::POLLIN != 0 {
            if let Ok(req) = ScmpNotifReq::receive(listener.as_raw_fd()) {
                let mut answer = None;
                if let Some(r) = recording.as_mut() {
                    answer = r.decide(&req, say);
                }
                if answer.is_none() {
                    if let Some(l) = lending.as_mut() {
                        answer = Some(l.decide(&req, say));
                    }
                }
                respond(
                    listener.as_raw_fd(),
                    &req,
                    answer.unwrap_or(Answer::Continue),
                );
            }
        } else if pfd.revents & (libc::POLLHUP | libc::POLLERR) != 0 {
            // Every process under the filter is gone; only reaping is left.
            listening = false;
        }
    }
}

fn respond(listener: RawFd, req: &ScmpNotifReq, answer: Answer) {
    let empty = ScmpNotifRespFlags::empty();
    let _ = match answer {
        Answer::Continue => ScmpNotifResp::new_continue(req.id, empty).respond(listener),
        Answer::Value(v) => ScmpNotifResp::new_val(req.id, v, empty).respond(listener),
        Answer::Error(e) => ScmpNotifResp::new_error(req.id, -(e as i32), empty).respond(listener),
        Answer::Fd { fd, cloexec } => {
            let add = libc::seccomp_notif_addfd {
                id: req.id,
                flags: libc::SECCOMP_ADDFD_FLAG_SEND as u32,
                srcfd: fd.as_raw_fd() as u32,
                newfd: 0,
                newfd_flags: if cloexec { libc::O_CLOEXEC as u32 } else { 0 },
            };
            // SAFETY: a plain ioctl with a fully initialised argument.
            let r = unsafe { libc::ioctl(listener, libc::SECCOMP_IOCTL_NOTIF_ADDFD, &add) };
            if r < 0 {
                // The target died meanwhile, or cannot take another descriptor.
                let e = Errno::last();
                let _ = ScmpNotifResp::new_error(req.id, -(e as i32), empty).respond(listener);
            }
            Ok(())
        }
    };
}

/// A path argument longer than this is not one the kernel would take.
const PATH_MAX: usize = 4096;

fn mem(pid: u32, write: bool) -> Option<std::fs::File> {
    std::fs::File::options()
        .read(true)
        .write(write)
        .open(format!("/proc/{pid}/mem"))
        .ok()
}

pub fn read_mem(pid: u32, addr: u64, buf: &mut [u8]) -> Option<usize> {
    use std::os::unix::fs::FileExt;
    mem(pid, false)?.read_at(buf, addr).ok()
}

/// Writes all of `bytes` into the job's memory at `addr` (a result buffer).
pub fn write_mem(pid: u32, addr: u64, bytes: &[u8]) -> Result<(), Errno> {
    use std::os::unix::fs::FileExt;
    let f = mem(pid, true).ok_or(Errno::ESRCH)?;
    f.write_all_at(bytes, addr).map_err(|_| Errno::EFAULT)
}

pub fn read_u64(pid: u32, addr: u64) -> Option<u64> {
    let mut b = [0u8; 8];
    (read_mem(pid, addr, &mut b)? == 8).then(|| u64::from_ne_bytes(b))
}

/// The NUL-terminated path at `addr` in the job's memory, read a page-safe
/// chunk at a time (a string may end just before an unmapped page).
pub fn read_path(pid: u32, addr: u64) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = addr;
    while out.len() < PATH_MAX {
        let room = 256 - (at % 256) as usize;
        let mut chunk = vec![0u8; room];
        let n = read_mem(pid, at, &mut chunk)?;
        if n == 0 {
            return None;
        }
        if let Some(end) = chunk[..n].iter().position(|&b| b == 0) {
            out.extend_from_slice(&chunk[..end]);
            return Some(out);
        }
        out.extend_from_slice(&chunk[..n]);
        at += n as u64;
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn a_path_is_read_across_chunk_boundaries() {
        let s = format!("{}\0", "x".repeat(700));
        let got = read_path(std::process::id(), s.as_ptr() as u64).unwrap();
        assert_eq!(got.len(), 700);
    }

    #[test]
    fn a_result_buffer_is_written_in_place() {
        let buf = [0u8; 16];
        write_mem(std::process::id(), buf.as_ptr() as u64, b"kiln").unwrap();
        // SAFETY: volatile read of memory another path just wrote.
        let got: [u8; 4] = unsafe { std::ptr::read_volatile(buf.as_ptr() as *const [u8; 4]) };
        assert_eq!(&got, b"kiln");
    }

    pub(crate) fn export_pfc(ctx: &ScmpFilterContext) -> String {
        use std::io::{Read, Seek};
        let mut f = tempfile::tempfile().unwrap();
        ctx.export_pfc(&f).unwrap();
        f.rewind().unwrap();
        let mut v = String::new();
        f.read_to_string(&mut v).unwrap();
        v
    }

    #[test]
    fn one_filter_carries_both_duties_rules() {
        let d = Duties {
            lend: None,
            owners: true,
        };
        let pfc = export_pfc(&filter(&d).unwrap());
        for name in [
            "\"fchownat\"",
            "\"newfstatat\"",
            "\"statx\"",
            "\"setresuid\"",
        ] {
            assert!(pfc.contains(name), "{name} missing:\n{pfc}");
        }
        assert!(!pfc.contains("\"openat\""), "{pfc}");
    }
}
