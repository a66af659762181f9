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
use super::syscall::Linux;
use super::wait::{self, Reap};
use anyhow::{anyhow, Context, Result};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use nix::unistd::{fork, ForkResult, Pid};
use std::collections::VecDeque;
use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

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

fn die_with_parent() {
    // SAFETY: plain prctl.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
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
    die_with_parent();
    if let Err(e) =
        unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWIPC)
    {
        return report(&out, &format!("unshare(mount, pid, ipc): {}", e.desc()));
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
    die_with_parent();
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
    // A new session: no controlling terminal, so no TIOCSTI into the caller's.
    let _ = nix::unistd::setsid();
    let null = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
    if null < 0 {
        return report(&out, "cannot open /dev/null");
    }
    // SAFETY: plain dup2 on descriptors this process owns.
    let redirected = unsafe {
        libc::dup2(null, 0) == 0
            && libc::dup2(out.as_raw_fd(), 1) == 1
            && libc::dup2(out.as_raw_fd(), 2) == 2
    };
    if !redirected {
        return report(&out, "cannot redirect the hook's standard input and output");
    }
    std::mem::forget(out);
    // The listener's way out to PID 1 stays at fd 3 until it is sent.
    let first_closed = match notify {
        Some((_, sock)) => {
            // SAFETY: plain dup2 of the socket this process holds.
            if unsafe { libc::dup2(sock, 3) } != 3 {
                return report(&out_for_errors(), "cannot pass the lending socket on");
            }
            4u32
        }
        None => 3,
    };
    // Only stdio crosses into the hook: a descriptor left open would hand it
    // whatever kiln had open, so a failure stops the job.
    // SAFETY: close_range on this process's own table.
    if unsafe { libc::syscall(libc::SYS_close_range, first_closed, u32::MAX, 0u32) } != 0 {
        return report(
            &out_for_errors(),
            "close_range failed: the hook would inherit descriptors",
        );
    }
    let stderr = unsafe { OwnedFd::from_raw_fd(2) };
    if unsafe { libc::chdir(cwd.as_ptr()) } != 0 {
        return report(
            &stderr,
            &format!(
                "chdir {}: {}",
                cwd.to_string_lossy(),
                nix::errno::Errno::last().desc()
            ),
        );
    }
    if let Err(e) = caps::restrict(keep) {
        return report(&stderr, &format!("dropping capabilities: {e}"));
    }
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return report(&stderr, "prctl(PR_SET_NO_NEW_PRIVS) failed");
    }
    if let Some((ctx, _)) = notify {
        if let Err(e) = send_listener(ctx) {
            return report(&stderr, &format!("loading the notification filter: {e}"));
        }
    }
    if let Some(f) = filter {
        if let Err(e) = f.load() {
            return report(&stderr, &format!("loading the seccomp filter: {e}"));
        }
    }
    let mut argp: Vec<*const libc::c_char> = argv.iter().map(|c| c.as_ptr()).collect();
    argp.push(std::ptr::null());
    let mut envpp: Vec<*const libc::c_char> = envp.iter().map(|c| c.as_ptr()).collect();
    envpp.push(std::ptr::null());
    unsafe { libc::execve(argp[0], argp.as_ptr(), envpp.as_ptr()) };
    let err = nix::errno::Errno::last();
    report(
        &stderr,
        &format!("cannot run {}: {}", argv[0].to_string_lossy(), err.desc()),
    );
    if err == nix::errno::Errno::ENOENT {
        127
    } else {
        126
    }
}

/// Loads the notification filter and hands its listener to PID 1 (fd 3).
fn send_listener(ctx: &libseccomp::ScmpFilterContext) -> Result<(), String> {
    ctx.load().map_err(|e| e.to_string())?;
    let listener = ctx.get_notify_fd().map_err(|e| e.to_string())?;
    let fds = [listener];
    let iov = [std::io::IoSlice::new(b"l")];
    let sent = sendmsg::<()>(
        3,
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    );
    unsafe {
        libc::close(listener);
        libc::close(3);
    }
    sent.map(|_| ()).map_err(|e| e.desc().to_string())
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
