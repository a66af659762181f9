//! A real block device for `block-device.d`, for flavours that ask for one
//! (a `real-block-device` file; docs/architecture.md §6). The build runs in a user namespace,
//! where a setuid helper gains nothing and sudo does not work; so before entering
//! it kiln forks a broker that stays outside, runs kiln-helper, and passes the
//! descriptors it gets over a socket. The broker detaches what it attached when
//! the build's end of the socket closes, however the build ended; autoclear
//! frees the loop device once the last descriptor is gone.

use crate::helper::client::Helper;
use crate::helper::protocol::{recv, send};
use anyhow::{anyhow, bail, Context, Result};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::unistd::{fork, ForkResult, Pid};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// The file name in a flavour's directory that asks for a real block device.
pub const ASK_FILE: &str = "real-block-device";

/// The build's end of the broker.
pub struct Broker {
    /// Taken by Drop: closing it is what tells the broker to finish.
    sock: Option<OwnedFd>,
    pid: Pid,
}

/// The lent disk, as the build holds it.
pub struct Attached {
    /// "loop3": the node is /dev/loop3.
    pub name: String,
    pub disk: OwnedFd,
}

impl Broker {
    /// Forks the broker. Call before entering the namespace, single-threaded.
    pub fn start(helper: &Helper) -> Result<Broker> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .context("socketpair")?;
        // SAFETY: kiln is single-threaded here; the child only runs `serve`.
        match unsafe { fork() }.context("fork")? {
            ForkResult::Child => {
                drop(ours);
                let code = serve(&theirs, helper);
                // SAFETY: leave without running the parent's destructors twice.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => Ok(Broker {
                sock: Some(ours),
                pid: child,
            }),
        }
    }

    /// Attaches `image` (opened read-write, owned by the caller).
    pub fn attach(&self, image: &File) -> Result<Attached> {
        let (text, mut fds) = self.ask("attach", &[image.as_fd()])?;
        let name = text
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        if fds.is_empty() || name.is_empty() {
            bail!("kiln-helper attach: the broker's reply carried no device");
        }
        Ok(Attached {
            name,
            disk: fds.remove(0),
        })
    }

    /// Fresh descriptors of the disk's partitions, after the kernel's partitions
    /// were made to match the table (kiln-helper rescan). Called from the hook's PID 1.
    pub fn partitions(&self) -> Result<Vec<(u32, OwnedFd)>, String> {
        let (text, fds) = self.ask("rescan", &[]).map_err(|e| format!("{e:#}"))?;
        let numbers: Vec<u32> = text
            .split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect();
        if numbers.len() != fds.len() {
            return Err(format!(
                "kiln-helper rescan: {} partitions named, {} descriptors received",
                numbers.len(),
                fds.len()
            ));
        }
        Ok(numbers.into_iter().zip(fds).collect())
    }

    pub fn detach(&self) -> Result<()> {
        self.ask("detach", &[]).map(|_| ())
    }

    fn ask(&self, verb: &str, fds: &[BorrowedFd]) -> Result<(String, Vec<OwnedFd>)> {
        let sock = self
            .sock
            .as_ref()
            .ok_or_else(|| anyhow!("the device broker is closed"))?
            .as_fd();
        send(sock, verb, fds).with_context(|| format!("asking the device broker to {verb}"))?;
        let (text, fds) = recv(sock)
            .with_context(|| format!("the device broker's answer to {verb}"))?
            .ok_or_else(|| anyhow!("the device broker exited during {verb}"))?;
        match text.strip_prefix("ok") {
            Some(rest) => Ok((rest.trim().to_string(), fds)),
            None => Err(anyhow!("{}", text.strip_prefix("error ").unwrap_or(&text))),
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        drop(self.sock.take());
        let _ = nix::sys::wait::waitpid(self.pid, None);
    }
}

/// The broker process: one request at a time, from the build's worker or a
/// hook's PID 1 (never both at once: the worker waits while a hook runs).
fn serve(sock: &OwnedFd, helper: &Helper) -> i32 {
    // Ctrl-C reaches the whole process group; the broker must outlive the
    // build to detach, and it leaves when the build's end closes.
    crate::sandbox::signals::ignore_interrupts();
    let mut disk: Option<OwnedFd> = None;
    while let Ok(Some((verb, fds))) = recv(sock.as_fd()) {
        let reply = match (verb.as_str(), fds.into_iter().next(), &disk) {
            ("attach", Some(image), None) => match helper.attach(&File::from(image)) {
                Ok(a) => {
                    let text = format!("ok {} {}", a.name, a.size);
                    let sent = send(sock.as_fd(), &text, &[a.disk.as_fd()]);
                    disk = Some(a.disk);
                    sent.ok();
                    continue;
                }
                Err(e) => format!("error {e:#}"),
            },
            ("rescan", None, Some(d)) => match helper.rescan(d.as_fd()) {
                Ok(parts) => {
                    let numbers: Vec<String> = parts.iter().map(|p| p.number.to_string()).collect();
                    let fds: Vec<BorrowedFd> = parts.iter().map(|p| p.fd.as_fd()).collect();
                    send(sock.as_fd(), &format!("ok {}", numbers.join(" ")), &fds).ok();
                    continue;
                }
                Err(e) => format!("error {e:#}"),
            },
            ("detach", None, Some(d)) => match helper.detach(d.as_fd()) {
                Ok(()) => {
                    disk = None;
                    "ok".to_string()
                }
                Err(e) => format!("error {e:#}"),
            },
            (v, _, _) => format!("error the device broker cannot {v} now"),
        };
        if send(sock.as_fd(), &reply, &[]).is_err() {
            break;
        }
    }
    if let Some(d) = disk {
        let _ = helper.detach(d.as_fd());
    }
    0
}
