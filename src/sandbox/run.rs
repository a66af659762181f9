//! Running one program (a hook, a bootstrapper) in a fresh mount and PID
//! namespace inside kiln's user namespace:
//!
//!   worker ─fork─► A: unshare(mount, pid, ipc) ─fork─► B: PID 1, mounts, reaper ─fork─► C: exec
//!
//! When C exits, B exits, and the kernel kills whatever C left running: a hook's
//! processes never outlive it. A and B die with their parent (PDEATHSIG), so
//! killing A tears the whole thing down.

use super::caps;
use super::lend::Lend;
use super::mounts::{self, Bind, View};
use super::notify::{self, Duties};
use super::seccomp::{Filter, Profile};
use super::signals;
use super::syscall::{Linux, Syscall};
use super::wait::{self, Reap};
use anyhow::{anyhow, Context, Result};
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{
    recvmsg, socketpair, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType,
};
use nix::unistd::{fork, ForkResult, Pid};
use std::collections::VecDeque;
use std::ffi::{CString, OsStr};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub struct Job<'a> {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub view: View,
    pub binds: Vec<Bind>,
    /// Keep CAP_SYS_ADMIN of kiln's namespace (bootstrapping needs to mount).
    pub sys_admin: bool,
    pub seccomp: Option<&'a Profile>,
    /// A real block device the job may open (block-device.d with kiln-helper).
    pub lend: Option<&'a Lend<'a>>,
    /// Record chown as owners and answer stat with them (built without
    /// subordinate ids: `sandbox::owners`).
    pub record_owners: bool,
}

pub struct Outcome {
    /// Exit code, or 128 + signal number.
    pub code: i32,
    /// The last lines of output, for error messages.
    pub tail: Vec<String>,
}

const TAIL: usize = 25;

/// Runs the job; `line` sees each line of its combined stdout/stderr.
pub fn run(job: &Job, line: &mut dyn FnMut(&str)) -> Result<Outcome> {
    let keep = caps::kept(job.sys_admin);
    let filter = match job.seccomp {
        Some(p) => Some(p.compile(&caps::names(&keep)).map_err(|e| anyhow!("{e}"))?),
        None => None,
    };
    let duties = Duties {
        lend: job.lend,
        owners: job.record_owners,
    };
    let notify = if duties.any() {
        Some(
            notify::filter(&duties)
                .map_err(|e| anyhow!("building the notification filter: {e}"))?,
        )
    } else {
        None
    };
    let stages = Stages {
        job,
        duties,
        keep: &keep,
        filter: filter.as_ref(),
        notify: notify.as_ref(),
    };
    let argv = cstrings(job.argv.iter().map(String::as_str))?;
    let envp = cstrings(
        job.env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str),
    )?;
    let cwd = CString::new(job.cwd.as_os_str().as_encoded_bytes()).context("cwd contains NUL")?;
    let (rd, wr) = nix::unistd::pipe().context("pipe")?;

    // SAFETY: kiln is single-threaded when it runs jobs; the child only calls
    // async-signal-safe functions and allocation-free code paths until exec.
    let a = match unsafe { fork() }.context("fork")? {
        ForkResult::Child => {
            drop(rd);
            let code = enter_job_namespaces(&stages, &argv, &envp, &cwd, wr);
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => child,
    };
    drop(wr);
    let mut tail = VecDeque::new();
    let read_result = pump(rd, a, &mut tail, line);
    let code = wait_code(a);
    read_result?;
    if signals::interrupted() {
        anyhow::bail!(super::Interrupted);
    }
    Ok(Outcome {
        code,
        tail: tail.into(),
    })
}

fn cstrings<'s>(it: impl Iterator<Item = &'s str>) -> Result<Vec<CString>> {
    it.map(|s| CString::new(s).with_context(|| format!("argument contains NUL: {s:?}")))
        .collect()
}

fn pump(
    rd: OwnedFd,
    a: Pid,
    tail: &mut VecDeque<String>,
    line: &mut dyn FnMut(&str),
) -> Result<()> {
    let mut file = std::fs::File::from(rd);
    let mut buf = [0u8; 8192];
    let mut pending: Vec<u8> = Vec::new();
    let mut killed = false;
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                pending.extend_from_slice(&buf[..n]);
                while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
                    let text = String::from_utf8_lossy(&pending[..pos]).into_owned();
                    pending.drain(..=pos);
                    emit(text, tail, line);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("reading hook output"),
        }
        if signals::interrupted() && !killed {
            let _ = kill(a, Signal::SIGKILL);
            killed = true;
        }
    }
    if !pending.is_empty() {
        emit(String::from_utf8_lossy(&pending).into_owned(), tail, line);
    }
    Ok(())
}

fn emit(text: String, tail: &mut VecDeque<String>, line: &mut dyn FnMut(&str)) {
    line(&text);
    if tail.len() == TAIL {
        tail.pop_front();
    }
    tail.push_back(text);
}

/// Waits for the job's first process; kiln's Ctrl-C kills it (and with it its
/// namespace) rather than leaving it to finish.
fn wait_code(pid: Pid) -> i32 {
    wait::until_exit(pid, Reap::Child, &mut || {
        if signals::interrupted() {
            let _ = kill(pid, Signal::SIGKILL);
        }
    })
}

fn die_with_parent(sys: &dyn Syscall) -> Result<(), String> {
    sys.set_parent_death_signal(Signal::SIGKILL)
        .map_err(|e| format!("prctl(PR_SET_PDEATHSIG): {}", e.desc()))
}

/// The first stage's calls: it dies with the worker, then leaves for the job's
/// own mount, PID and IPC namespaces (its next child is their PID 1).
fn unshare_job_namespaces(sys: &dyn Syscall) -> Result<(), String> {
    die_with_parent(sys)?;
    sys.unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWIPC)
        .map_err(|e| format!("unshare(mount, pid, ipc): {}", e.desc()))
}

/// What the forked stages need, borrowed from `run`.
struct Stages<'a> {
    job: &'a Job<'a>,
    duties: Duties<'a>,
    keep: &'a caps::CapsHashSet,
    filter: Option<&'a Filter>,
    notify: Option<&'a libseccomp::ScmpFilterContext>,
}

/// The job's first process: new mount, PID and IPC namespaces, then their PID 1.
fn enter_job_namespaces(
    s: &Stages,
    argv: &[CString],
    envp: &[CString],
    cwd: &CString,
    out: OwnedFd,
) -> i32 {
    signals::reset_defaults();
    if let Err(e) = unshare_job_namespaces(&Linux) {
        return report(&out, &e);
    }
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let code = job_namespace_init(s, argv, envp, cwd, out);
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => {
            drop(out);
            wait_code(child)
        }
        Err(e) => report(&out, &format!("fork: {}", e.desc())),
    }
}

/// PID 1 of the job's namespace: sets up its root, starts the job, supervises
/// device lending, and reaps until the job exits.
fn job_namespace_init(
    s: &Stages,
    argv: &[CString],
    envp: &[CString],
    cwd: &CString,
    out: OwnedFd,
) -> i32 {
    if let Err(e) = die_with_parent(&Linux) {
        return report(&out, &e);
    }
    if let Err(e) = mounts::set_up(&Linux, &s.job.view, &s.job.binds) {
        return report(&out, &e.to_string());
    }
    // The job hands its notification listener to us over this pair.
    let pair = match s.notify {
        Some(_) => match socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        ) {
            Ok(p) => Some(p),
            Err(e) => return report(&out, &format!("socketpair: {}", e.desc())),
        },
        None => None,
    };
    let c = match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let notify = s.notify.zip(pair.as_ref().map(|p| p.1.as_raw_fd()));
            let code = exec_job(s.keep, s.filter, notify, argv, envp, cwd, out);
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => return report(&out, &format!("fork: {}", e.desc())),
    };
    if let Some((ours, theirs)) = pair {
        drop(theirs);
        if let Some(listener) = receive_fd(&ours) {
            let say = |m: &str| {
                let _ = nix::unistd::write(&out, format!("{m}\n").as_bytes());
            };
            return notify::supervise(listener, c, &s.duties, &say);
        }
    }
    drop(out);
    // Reap everything re-parented to us until the job itself exits.
    wait::until_exit(c, Reap::All, &mut || {})
}

/// One descriptor passed with SCM_RIGHTS; None when the sender went away.
fn receive_fd(sock: &OwnedFd) -> Option<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .ok()?;
    for c in msg.cmsgs().ok()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            // SAFETY: the kernel just installed these descriptors for us.
            return fds.first().map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    None
}

fn exec_job(
    keep: &caps::CapsHashSet,
    filter: Option<&Filter>,
    notify: Option<(&libseccomp::ScmpFilterContext, RawFd)>,
    argv: &[CString],
    envp: &[CString],
    cwd: &CString,
    out: OwnedFd,
) -> i32 {
    let steps = PreExec {
        out: out.as_raw_fd(),
        lending: notify.map(|(_, sock)| sock),
        cwd: Path::new(OsStr::from_bytes(cwd.to_bytes())),
        keep,
        notify: notify.map(|(ctx, _)| ctx),
        filter,
    };
    // Standard output and error take the descriptor over and close_range closes
    // its own number: it must never be closed again here.
    let out = std::mem::ManuallyDrop::new(out);
    if let Err(e) = prepare_exec(&Linux, &steps) {
        return if e.stdio_redirected {
            report(&out_for_errors(), &e.message)
        } else {
            report(&out, &e.message)
        };
    }
    let mut argp: Vec<*const libc::c_char> = argv.iter().map(|c| c.as_ptr()).collect();
    argp.push(std::ptr::null());
    let mut envpp: Vec<*const libc::c_char> = envp.iter().map(|c| c.as_ptr()).collect();
    envpp.push(std::ptr::null());
    unsafe { libc::execve(argp[0], argp.as_ptr(), envpp.as_ptr()) };
    let err = nix::errno::Errno::last();
    report(
        &out_for_errors(),
        &format!("cannot run {}: {}", argv[0].to_string_lossy(), err.desc()),
    );
    if err == nix::errno::Errno::ENOENT {
        127
    } else {
        126
    }
}

/// What the job's last process needs for its calls before `exec`.
struct PreExec<'a> {
    /// The job's output pipe, which becomes its stdout and stderr.
    out: RawFd,
    /// PID 1's end of the notification socket (lending, owner recording), passed on at fd 3.
    lending: Option<RawFd>,
    cwd: &'a Path,
    keep: &'a caps::CapsHashSet,
    notify: Option<&'a libseccomp::ScmpFilterContext>,
    filter: Option<&'a Filter>,
}

/// A refused call before `exec`, and whether the job's output is already at
/// fd 2 (the report goes there) or still only at its own descriptor.
#[derive(Debug)]
struct Refused {
    message: String,
    stdio_redirected: bool,
}

/// The job's last process, from fork to `exec`, in the order that matters: a new
/// session, stdio and nothing else, the working directory, capabilities cut,
/// then no_new_privs, which loading a seccomp filter requires; the filters come
/// last so that none of these calls is filtered.
fn prepare_exec(sys: &dyn Syscall, p: &PreExec) -> Result<(), Refused> {
    let before = |message: String| Refused {
        message,
        stdio_redirected: false,
    };
    let after = |message: String| Refused {
        message,
        stdio_redirected: true,
    };
    // A new session: no controlling terminal, so no TIOCSTI into the caller's.
    sys.setsid()
        .map_err(|e| before(format!("setsid: {}", e.desc())))?;
    let null = sys
        .open_dev_null()
        .map_err(|_| before("cannot open /dev/null".into()))?;
    let redirected =
        sys.dup2(null, 0).is_ok() && sys.dup2(p.out, 1).is_ok() && sys.dup2(p.out, 2).is_ok();
    if !redirected {
        return Err(before(
            "cannot redirect the hook's standard input and output".into(),
        ));
    }
    // The listener's way out to PID 1 stays at fd 3 until it is sent.
    let first_closed = match p.lending {
        Some(sock) => {
            sys.dup2(sock, 3)
                .map_err(|_| after("cannot pass the lending socket on".into()))?;
            4
        }
        None => 3,
    };
    // Only stdio crosses into the hook: a descriptor left open would hand it
    // whatever kiln had open, so a failure stops the job.
    sys.close_range(first_closed)
        .map_err(|_| after("close_range failed: the hook would inherit descriptors".into()))?;
    sys.chdir(p.cwd)
        .map_err(|e| after(format!("chdir {}: {}", p.cwd.display(), e.desc())))?;
    sys.restrict_capabilities(p.keep)
        .map_err(|e| after(format!("dropping capabilities: {e}")))?;
    sys.set_no_new_privs()
        .map_err(|_| after("prctl(PR_SET_NO_NEW_PRIVS) failed".into()))?;
    if let Some(ctx) = p.notify {
        send_listener(sys, ctx)
            .map_err(|e| after(format!("loading the notification filter: {e}")))?;
    }
    if let Some(f) = p.filter {
        sys.load_seccomp(f)
            .map_err(|e| after(format!("loading the seccomp filter: {e}")))?;
    }
    Ok(())
}

/// Loads the notification filter and hands its listener to PID 1 (fd 3).
fn send_listener(sys: &dyn Syscall, ctx: &libseccomp::ScmpFilterContext) -> Result<(), String> {
    let listener = sys.load_notify_filter(ctx).map_err(|e| e.to_string())?;
    let sent = sys.send_fd(3, listener);
    sys.close(listener);
    sys.close(3);
    sent.map_err(|e| e.desc().to_string())
}

/// The job's output, once stdout and stderr point at it (for reports before
/// `stderr` is taken over below).
fn out_for_errors() -> std::mem::ManuallyDrop<OwnedFd> {
    // SAFETY: fd 2 is the job's output pipe from here on; never closed here.
    std::mem::ManuallyDrop::new(unsafe { OwnedFd::from_raw_fd(2) })
}

/// Child-side failure: one line on the job's output, then a distinctive status.
fn report(out: &OwnedFd, msg: &str) -> i32 {
    let text = format!("kiln sandbox: {msg}\n");
    let _ = nix::unistd::write(out, text.as_bytes());
    125
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::seccomp::Profile;
    use crate::sandbox::syscall::{Call, Recorder};
    use nix::errno::Errno;

    const OUT: RawFd = 7;
    const LENDING: RawFd = 9;
    const NULL: RawFd = 40;
    const LISTENER: RawFd = 41;

    fn stdio() -> Vec<Call> {
        vec![
            Call::Setsid,
            Call::OpenDevNull,
            Call::Dup2(NULL, 0),
            Call::Dup2(OUT, 1),
            Call::Dup2(OUT, 2),
        ]
    }

    fn with(
        keep: &caps::CapsHashSet,
        notify: Option<&libseccomp::ScmpFilterContext>,
        filter: Option<&Filter>,
        f: impl FnOnce(&PreExec),
    ) {
        f(&PreExec {
            out: OUT,
            lending: notify.map(|_| LENDING),
            cwd: Path::new("/tmp/in_target.d"),
            keep,
            notify,
            filter,
        })
    }

    #[test]
    fn the_first_stage_dies_with_the_worker_then_unshares() {
        let rec = Recorder::default();
        unshare_job_namespaces(&rec).unwrap();
        assert_eq!(
            rec.calls(),
            [
                Call::ParentDeathSignal(Signal::SIGKILL),
                Call::Unshare(
                    CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWIPC
                ),
            ]
        );
        let rec = Recorder::failing(|c| matches!(c, Call::Unshare(_)), Errno::EPERM);
        assert_eq!(
            unshare_job_namespaces(&rec).unwrap_err(),
            format!("unshare(mount, pid, ipc): {}", Errno::EPERM.desc())
        );
    }

    #[test]
    fn a_job_gets_stdio_only_and_no_new_privs_before_its_seccomp_filter() {
        let keep = caps::kept(false);
        let filter = Profile::builtin()
            .unwrap()
            .compile(&caps::names(&keep))
            .unwrap();
        let rec = Recorder::default();
        with(&keep, None, Some(&filter), |p| {
            prepare_exec(&rec, p).unwrap()
        });
        let mut want = stdio();
        want.extend([
            Call::CloseRange(3),
            Call::Chdir("/tmp/in_target.d".into()),
            Call::RestrictCapabilities(keep.clone()),
            Call::NoNewPrivs,
            Call::LoadSeccomp,
        ]);
        assert_eq!(rec.calls(), want);
    }

    #[test]
    fn a_lending_job_keeps_fd_3_until_its_listener_is_sent() {
        let keep = caps::kept(true);
        let notify = libseccomp::ScmpFilterContext::new(libseccomp::ScmpAction::Allow).unwrap();
        let rec = Recorder::default();
        with(&keep, Some(&notify), None, |p| {
            prepare_exec(&rec, p).unwrap()
        });
        let mut want = stdio();
        want.extend([
            Call::Dup2(LENDING, 3),
            Call::CloseRange(4),
            Call::Chdir("/tmp/in_target.d".into()),
            Call::RestrictCapabilities(keep.clone()),
            Call::NoNewPrivs,
            Call::LoadNotifyFilter,
            Call::SendFd(3, LISTENER),
            Call::Close(LISTENER),
            Call::Close(3),
        ]);
        assert_eq!(rec.calls(), want);
    }

    #[test]
    fn a_refused_call_stops_the_job_before_exec_and_says_where_to_report() {
        let keep = caps::kept(false);
        let rec = Recorder::failing(|c| *c == Call::Dup2(OUT, 2), Errno::EBADF);
        with(&keep, None, None, |p| {
            let e = prepare_exec(&rec, p).unwrap_err();
            assert_eq!(
                e.message,
                "cannot redirect the hook's standard input and output"
            );
            assert!(!e.stdio_redirected);
        });
        assert_eq!(rec.calls(), stdio());

        let rec = Recorder::failing(|c| matches!(c, Call::CloseRange(_)), Errno::EINVAL);
        with(&keep, None, None, |p| {
            let e = prepare_exec(&rec, p).unwrap_err();
            assert!(e.message.starts_with("close_range failed"), "{}", e.message);
            assert!(e.stdio_redirected);
        });
        assert_eq!(rec.calls().last(), Some(&Call::CloseRange(3)));

        let rec = Recorder::failing(|c| matches!(c, Call::Chdir(_)), Errno::ENOENT);
        with(&keep, None, None, |p| {
            let e = prepare_exec(&rec, p).unwrap_err();
            assert_eq!(
                e.message,
                format!("chdir /tmp/in_target.d: {}", Errno::ENOENT.desc())
            );
        });
        assert!(!rec.calls().contains(&Call::NoNewPrivs));

        let rec = Recorder::failing(|c| *c == Call::NoNewPrivs, Errno::EINVAL);
        with(&keep, None, None, |p| {
            let e = prepare_exec(&rec, p).unwrap_err();
            assert_eq!(e.message, "prctl(PR_SET_NO_NEW_PRIVS) failed");
        });
    }

    #[test]
    fn a_listener_that_cannot_be_sent_is_still_closed_and_reported() {
        let notify = libseccomp::ScmpFilterContext::new(libseccomp::ScmpAction::Allow).unwrap();
        let rec = Recorder::failing(|c| matches!(c, Call::SendFd(..)), Errno::EPIPE);
        assert_eq!(
            send_listener(&rec, &notify).unwrap_err(),
            Errno::EPIPE.desc()
        );
        assert_eq!(rec.calls()[2..], [Call::Close(LISTENER), Call::Close(3)]);
    }
}
