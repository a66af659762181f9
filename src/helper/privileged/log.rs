//! Every refusal goes to standard error, for the caller, and to the
//! authentication log, for the administrator: a refused request to a
//! privileged program is worth a line whether or not anyone reads stderr.

use std::ffi::CString;

pub fn open() {
    // SAFETY: a static name; openlog keeps the pointer.
    unsafe { libc::openlog(c"kiln-helper".as_ptr(), libc::LOG_PID, libc::LOG_AUTHPRIV) };
}

pub fn refusal(caller: u32, verb: &str, reason: &str) {
    eprintln!("kiln-helper: {reason}");
    syslog(
        libc::LOG_WARNING,
        &format!("refused {verb} for uid {caller}: {reason}"),
    );
}

pub fn info(line: &str) {
    syslog(libc::LOG_INFO, line);
}

/// For a process with no one to tell but the log (the watcher).
pub fn warning(line: &str) {
    syslog(libc::LOG_WARNING, line);
}

fn syslog(priority: libc::c_int, line: &str) {
    let Ok(c) = CString::new(line.replace('\0', "\\0")) else {
        return;
    };
    // SAFETY: a constant format with one string argument.
    unsafe { libc::syslog(priority, c"%s".as_ptr(), c.as_ptr()) };
}
