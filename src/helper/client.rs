//! kiln's side of kiln-helper: finding it, running it, and taking its reply.
//! Attached devices need no detach call to go away: the helper binds them with
//! autoclear, so closing every descriptor of a device and its partitions (the
//! fields of `Attached` and `Partition`) detaches it.

use super::protocol::{self, DiskLine, Message, PartLine};
use anyhow::{bail, Context, Result};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

/// Where an installed helper is looked for, after the one beside kiln itself.
pub const DEFAULT_PATHS: [&str; 2] = [
    "/usr/local/libexec/kiln/kiln-helper",
    "/usr/libexec/kiln/kiln-helper",
];

/// `make install` puts the helper in PREFIX/libexec/kiln beside PREFIX/bin, so
/// a kiln installed under any prefix finds its own helper first.
fn candidates() -> Vec<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("libexec/kiln/kiln-helper")));
    let mut paths: Vec<PathBuf> = beside.into_iter().collect();
    for p in DEFAULT_PATHS.iter().map(PathBuf::from) {
        if !paths.contains(&p) {
            paths.push(p);
        }
    }
    paths
}

/// What README's "Real block devices: kiln-helper" says, for an error message.
pub const INSTALL: &str = "\
kiln-helper (a small privileged program, only for builds that need a real block device) is not installed.
Install it one of two ways, as root, from kiln's source tree after `cargo build --release`:
  setuid root:
    install -d -m 0755 /usr/local/libexec/kiln
    install -o root -g root -m 4755 target/release/kiln-helper /usr/local/libexec/kiln/kiln-helper
  or through sudo, for the members of group kiln:
    install -d -m 0755 /usr/local/libexec/kiln
    install -o root -g root -m 0755 target/release/kiln-helper /usr/local/libexec/kiln/kiln-helper
    cp contrib/sudoers.d/* /etc/sudoers.d/ && chmod 0440 /etc/sudoers.d/kiln && visudo -c
    groupadd -f kiln && usermod -aG kiln USER    (USER logs in again to join the group)
`make install` and the Debian package put it in PREFIX/libexec/kiln without the setuid bit:
  setuid root: chmod 4755 PREFIX/libexec/kiln/kiln-helper (for the package:
    dpkg-statoverride --update --add root root 4755 /usr/libexec/kiln/kiln-helper)
  or through sudo: the sudoers example in PREFIX/share/doc/kiln/examples names the installed path.
Or point KILN_HELPER at an installed copy.";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Run directly: installed setuid root, or kiln itself runs as root.
    Setuid,
    /// Run as `sudo -n PROGRAM VERB`, allowed by contrib/sudoers.d/kiln.
    Sudo,
}

#[derive(Debug, Clone)]
pub struct Helper {
    pub program: PathBuf,
    pub mode: Mode,
}

pub struct Attached {
    /// The kernel's name, "loop3".
    pub name: String,
    pub size: u64,
    pub disk: OwnedFd,
    pub partitions: Vec<Partition>,
}

pub struct Partition {
    pub number: u32,
    pub start: u64,
    pub size: u64,
    pub fd: OwnedFd,
}

/// The disk (with its line, for attach) and the partitions of an `ok` reply.
pub type Devices = (Option<(DiskLine, OwnedFd)>, Vec<Partition>);

/// What one run of the helper gave back.
pub struct Reply {
    pub status: ExitStatus,
    pub stderr: String,
    /// None when the helper exited without sending anything.
    pub message: Option<Message>,
    pub fds: Vec<OwnedFd>,
}

impl Reply {
    /// The `ok` reply's lines and descriptors; the helper's reason as the error otherwise.
    pub fn ok(self) -> Result<(Option<DiskLine>, Vec<PartLine>, Vec<OwnedFd>)> {
        match self.message {
            Some(Message::Ok { disk, parts }) if self.status.success() => {
                let want = disk.iter().count() + parts.len();
                if self.fds.len() != want {
                    bail!(
                        "kiln-helper sent {} descriptors for {want} devices",
                        self.fds.len()
                    );
                }
                Ok((disk, parts, self.fds))
            }
            Some(Message::Error(reason)) => bail!("kiln-helper refused: {reason}"),
            _ => bail!(
                "kiln-helper failed ({}) without a reply: {}",
                self.status,
                self.stderr.trim()
            ),
        }
    }

    /// The `ok` reply as devices: the disk (attach only) and the partitions.
    pub fn devices(self) -> Result<Devices> {
        let (disk, parts, fds) = self.ok()?;
        let mut fds = fds.into_iter();
        // ok() checked that there is one descriptor per line.
        let disk = disk.and_then(|d| Some((d, fds.next()?)));
        let parts = parts
            .into_iter()
            .zip(fds)
            .map(|(p, fd)| Partition {
                number: p.number,
                start: p.start,
                size: p.size,
                fd,
            })
            .collect();
        Ok((disk, parts))
    }
}

impl Helper {
    /// `explicit`, else $KILN_HELPER, else the first of `candidates()` that exists.
    /// Setuid if it is root's and setuid (or kiln runs as root); else Sudo if
    /// sudo lets this user run it without a password; else the install
    /// instructions, as the error.
    pub fn locate(explicit: Option<&Path>) -> Result<Helper> {
        let chosen = explicit
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("KILN_HELPER").map(PathBuf::from));
        let candidates: Vec<PathBuf> = match chosen {
            Some(p) if !p.exists() => bail!(
                "KILN_HELPER names {}, which does not exist.\n{INSTALL}",
                p.display()
            ),
            Some(p) => vec![p],
            None => candidates(),
        };
        let mut seen = Vec::new();
        for program in candidates {
            let Ok(meta) = std::fs::metadata(&program) else {
                continue;
            };
            let setuid = meta.uid() == 0 && meta.mode() & 0o4000 != 0 && meta.mode() & 0o001 != 0;
            if setuid || nix::unistd::getuid().is_root() {
                return Ok(Helper {
                    program,
                    mode: Mode::Setuid,
                });
            }
            if sudo_allows(&program) {
                return Ok(Helper {
                    program,
                    mode: Mode::Sudo,
                });
            }
            seen.push(program.display().to_string());
        }
        if seen.is_empty() {
            bail!("{INSTALL}");
        }
        bail!(
            "{} is neither setuid root nor allowed through `sudo -n` for this user.\n{INSTALL}",
            seen.join(" and ")
        );
    }

    /// The helper with a clean environment, ready for its descriptors.
    pub fn command(&self, verb: &str) -> Command {
        let mut cmd = match self.mode {
            Mode::Setuid => Command::new(&self.program),
            Mode::Sudo => {
                let mut c = Command::new("sudo");
                c.arg("-n").arg(&self.program);
                c
            }
        };
        cmd.arg(verb)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        cmd
    }

    /// Binds `image` (open read-write, owned by this user) to a loop device.
    pub fn attach(&self, image: &std::fs::File) -> Result<Attached> {
        let stdin = Stdio::from(
            image
                .try_clone()
                .context("duplicating the image's descriptor")?,
        );
        let (disk, partitions) = exchange(self.command("attach"), stdin)?.devices()?;
        let (line, disk) = disk.context("kiln-helper's attach reply names no disk")?;
        Ok(Attached {
            name: line.name,
            size: line.size,
            disk,
            partitions,
        })
    }

    /// After the table on `disk` changed: the kernel's partitions made to match
    /// it, all of them returned. Descriptors of partitions that changed must be
    /// closed first (the helper refuses to remove a partition in use).
    pub fn rescan(&self, disk: BorrowedFd) -> Result<Vec<Partition>> {
        Ok(exchange(self.command("rescan"), stdin_of(disk)?)?
            .devices()?
            .1)
    }

    /// Detaches `disk` once every descriptor of it is closed.
    pub fn detach(&self, disk: BorrowedFd) -> Result<()> {
        exchange(self.command("detach"), stdin_of(disk)?)?.ok()?;
        Ok(())
    }
}

fn sudo_allows(program: &Path) -> bool {
    let mut cmd = Command::new("sudo");
    cmd.arg("-n").arg("-l").arg(program).arg("attach");
    cmd.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd.status().is_ok_and(|s| s.success())
}

fn stdin_of(fd: BorrowedFd) -> Result<Stdio> {
    Ok(Stdio::from(
        fd.try_clone_to_owned()
            .context("duplicating the device's descriptor")?,
    ))
}

/// Runs `cmd` (the helper, however it is invoked) with `stdin` and a socket as
/// its standard output, and returns what it said. Refusals are replies too:
/// see `Reply::ok`.
pub fn exchange(mut cmd: Command, stdin: Stdio) -> Result<Reply> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .context("creating a socket for kiln-helper")?;
    cmd.stdin(stdin)
        .stdout(Stdio::from(theirs))
        .stderr(Stdio::piped());
    let shown = format!("{:?}", cmd.get_program());
    let child = cmd.spawn().with_context(|| format!("running {shown}"))?;
    // Our copy of the helper's end must go, or its exit would not end the wait.
    drop(cmd);
    let received = protocol::recv(ours.as_fd());
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {shown}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let (message, fds) = match received? {
        Some((text, fds)) => (Some(Message::parse(&text)?), fds),
        None => (None, Vec::new()),
    };
    Ok(Reply {
        status: out.status,
        stderr,
        message,
        fds,
    })
}
