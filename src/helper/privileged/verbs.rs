//! The three requests, start to reply.

use super::hardening::{Privileged, Unprivileged, Verb};
use super::registry::{Registry, MAX_PER_USER};
use super::{caller, log, loopdev, partitions, stdin, watcher};
use crate::helper::protocol::{self, DiskLine, Message, PartLine};
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};

pub fn run(verb: Verb, p: Privileged) -> Result<()> {
    let sock = stdin::reply_socket()?;
    match verb {
        Verb::Attach => attach(p, sock),
        Verb::Rescan => rescan(p, sock),
        Verb::Detach => detach(p, sock),
    }
}

fn attach(p: Privileged, sock: BorrowedFd) -> Result<()> {
    let uid = p.caller();
    let image = stdin::image(uid)?;
    let caller = caller::find(sock)?;
    {
        let registry = Registry::lock()?;
        registry.prune()?;
        let n = registry.count(uid);
        if n >= MAX_PER_USER {
            bail!("you (uid {uid}) already hold {n} loop devices attached by kiln-helper; detach some first");
        }
    }
    let bound = loopdev::bind(image)?;
    let dev = bound.dev.as_fd();
    let mut undo = Undo {
        name: &bound.name,
        dev,
        recorded: false,
        armed: true,
    };
    loopdev::enable_partscan(dev)?;
    let size = loopdev::size(dev)?;
    let parts = partitions::read_table(dev, size)?;
    partitions::sync(&p, dev, &bound.name, &parts)?;
    let files = partitions::open_all(&bound.name, &parts)?;
    let seq = loopdev::diskseq(dev)?;
    Registry::lock()?.record(&bound.name, uid, seq)?;
    undo.recorded = true;
    let u = p.drop_to_unprivileged();
    watcher::spawn(&u, caller, &bound.name, seq)?;
    let disk = Some(DiskLine {
        name: bound.name.clone(),
        size,
    });
    let fds: Vec<BorrowedFd> = std::iter::once(dev)
        .chain(files.iter().map(File::as_fd))
        .collect();
    reply(&u, sock, Message::Ok { disk, parts }, &fds)
        .with_context(|| format!("{} was detached again", bound.name))?;
    undo.armed = false;
    log::info(&format!(
        "attached {} for uid {uid} (disk sequence {seq})",
        bound.name
    ));
    Ok(())
}

fn rescan(p: Privileged, sock: BorrowedFd) -> Result<()> {
    let dev = stdin::loop_device()?;
    let seq = loopdev::diskseq(dev.fd)?;
    Registry::lock()?.check(&dev.name, p.caller(), seq)?;
    loopdev::flush(&p, dev.fd)?;
    let size = loopdev::size(dev.fd)?;
    let parts = partitions::read_table(dev.fd, size)?;
    partitions::sync(&p, dev.fd, &dev.name, &parts)?;
    let files = partitions::open_all(&dev.name, &parts)?;
    let u = p.drop_to_unprivileged();
    let fds: Vec<BorrowedFd> = files.iter().map(File::as_fd).collect();
    reply(&u, sock, Message::Ok { disk: None, parts }, &fds)
}

fn detach(p: Privileged, sock: BorrowedFd) -> Result<()> {
    // Detaching needs no capability: give it up before touching anything.
    let u = p.drop_to_unprivileged();
    let dev = stdin::loop_device()?;
    let seq = loopdev::diskseq(dev.fd)?;
    let registry = Registry::lock()?;
    registry.check(&dev.name, u.caller(), seq)?;
    loopdev::clear(dev.fd)?;
    registry.remove(&dev.name)?;
    log::info(&format!("detached {} for uid {}", dev.name, u.caller()));
    reply(
        &u,
        sock,
        Message::Ok {
            disk: None,
            parts: Vec::<PartLine>::new(),
        },
        &[],
    )
}

/// Only once every capability is gone: the caller gets its descriptors from a
/// process that can no longer do anything with them it could not.
fn reply(_: &Unprivileged, sock: BorrowedFd, message: Message, fds: &[BorrowedFd]) -> Result<()> {
    protocol::send(sock, &message.render(), fds).map_err(|e| {
        anyhow::anyhow!(
            "the reply could not be sent (did the caller go away?): {}",
            e.desc()
        )
    })
}

/// Until disarmed, dropping it detaches the device and forgets it: nothing
/// stays attached for a caller that never got its descriptors.
struct Undo<'a> {
    name: &'a str,
    dev: BorrowedFd<'a>,
    recorded: bool,
    armed: bool,
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let _ = loopdev::clear(self.dev);
        if self.recorded {
            let _ = Registry::lock().and_then(|r| r.remove(self.name));
        }
    }
}
