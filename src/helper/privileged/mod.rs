//! The privileged side of kiln-helper (docs/architecture.md §6). Everything here runs as root
//! on behalf of an unprivileged caller: it trusts nothing the caller controls,
//! keeps CAP_SYS_ADMIN only while it adds or removes partitions, and refuses,
//! with a logged reason, anything it does not recognise.

mod caller;
mod hardening;
mod log;
mod loopdev;
mod partitions;
mod registry;
mod stdin;
mod verbs;
mod watcher;

use crate::helper::protocol::{self, Message};
use hardening::{Privileged, Start};
use std::ffi::{c_char, c_int};

/// The whole program; returns its exit status.
///
/// # Safety
/// `argv` holds `argc` valid C strings, as the C runtime passes them to main.
pub unsafe fn main(argc: c_int, argv: *const *const c_char) -> c_int {
    let start = unsafe { Start::capture(argc, argv) };
    log::open();
    let verb = start.verb();
    let result = verb
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e:#}"))
        .and_then(|&verb| {
            let p = Privileged::acquire(start.caller()?)?;
            verbs::run(verb, p)
        });
    let Err(e) = result else { return 0 };
    let reason = format!("{e:#}");
    let who = start.caller().unwrap_or(0);
    log::refusal(who, verb.map(|v| v.name()).unwrap_or("a request"), &reason);
    if let Ok(sock) = stdin::reply_socket() {
        let _ = protocol::send(sock, &Message::Error(reason).render(), &[]);
    }
    1
}
