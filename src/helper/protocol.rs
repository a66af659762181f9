//! What kiln-helper answers, shared by both sides: one message on the Unix socket
//! that is the helper's standard output, holding a short text and the descriptors
//! it names. One message, so a reply is never half-read and a descriptor is never
//! matched to the wrong line.
//!
//! ```text
//! ok                         error <message>
//! disk loop3 67108864
//! part 1 1048576 8388608     (number, start and size in bytes; one
//! part 2 9437184 16777216     descriptor per `disk` and `part` line, in order)
//! ```

use anyhow::{bail, Context, Result};
use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// A partition table the helper accepts holds at most this many partitions.
pub const MAX_PARTITIONS: usize = 128;
/// The disk and every partition: under the kernel's SCM_MAX_FD (253).
pub const MAX_FDS: usize = MAX_PARTITIONS + 1;
/// Room for the longest reply: MAX_PARTITIONS lines of three numbers.
const MAX_PAYLOAD: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartLine {
    pub number: u32,
    pub start: u64,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskLine {
    /// The kernel's name, "loop3".
    pub name: String,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Ok {
        disk: Option<DiskLine>,
        parts: Vec<PartLine>,
    },
    Error(String),
}

impl Message {
    pub fn render(&self) -> String {
        match self {
            Message::Error(m) => format!("error {}\n", m.replace(['\n', '\r'], " ")),
            Message::Ok { disk, parts } => {
                let mut s = String::from("ok\n");
                if let Some(d) = disk {
                    s += &format!("disk {} {}\n", d.name, d.size);
                }
                for p in parts {
                    s += &format!("part {} {} {}\n", p.number, p.start, p.size);
                }
                s
            }
        }
    }

    pub fn parse(text: &str) -> Result<Message> {
        if let Some(m) = text.strip_prefix("error ") {
            return Ok(Message::Error(m.trim_end().to_string()));
        }
        let mut lines = text.lines();
        if lines.next() != Some("ok") {
            bail!("kiln-helper's reply does not start with `ok` or `error`: {text:?}");
        }
        let (mut disk, mut parts) = (None, Vec::new());
        for (i, line) in lines.enumerate() {
            let words: Vec<&str> = line.split(' ').collect();
            match words[..] {
                ["disk", name, size] if i == 0 && is_loop_name(name) => {
                    disk = Some(DiskLine {
                        name: name.to_string(),
                        size: number(size, line)?,
                    })
                }
                ["part", n, start, size] if parts.len() < MAX_PARTITIONS => parts.push(PartLine {
                    number: number(n, line)?,
                    start: number(start, line)?,
                    size: number(size, line)?,
                }),
                _ => bail!("kiln-helper's reply has an unexpected line {line:?}"),
            }
        }
        Ok(Message::Ok { disk, parts })
    }

    /// How many descriptors travel with this message.
    pub fn fd_count(&self) -> usize {
        match self {
            Message::Error(_) => 0,
            Message::Ok { disk, parts } => disk.iter().count() + parts.len(),
        }
    }
}

fn number<T: std::str::FromStr>(word: &str, line: &str) -> Result<T> {
    word.parse()
        .ok()
        .with_context(|| format!("kiln-helper's reply has a bad number in {line:?}"))
}

pub fn is_loop_name(name: &str) -> bool {
    name.strip_prefix("loop")
        .is_some_and(|n| !n.is_empty() && n.len() <= 7 && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Sends `text` and `fds` as one message. Never blocks and never raises SIGPIPE:
/// a caller that stopped listening gets no reply, and the helper undoes its work.
pub fn send(sock: BorrowedFd, text: &str, fds: &[BorrowedFd]) -> nix::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsgs: Vec<ControlMessage> = if raw.is_empty() {
        vec![]
    } else {
        vec![ControlMessage::ScmRights(&raw)]
    };
    let flags = MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT;
    let sent = sendmsg::<UnixAddr>(
        sock.as_raw_fd(),
        &[IoSlice::new(text.as_bytes())],
        &cmsgs,
        flags,
        None,
    )?;
    if sent != text.len() {
        return Err(nix::errno::Errno::EMSGSIZE);
    }
    Ok(())
}

/// Receives one message. None when the sender closed its end without a word.
/// Every descriptor received is owned before anything is checked, so a bad
/// message leaks none of them.
pub fn recv(sock: BorrowedFd) -> Result<Option<(String, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; MAX_PAYLOAD];
    // u64 elements: cmsghdr alignment.
    let space =
        unsafe { libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<RawFd>()) as u32) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; zero is its empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    let n = loop {
        // SAFETY: msg points at live buffers of the sizes it states.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e).context("receiving kiln-helper's reply");
        }
    };
    let fds = owned_rights(&msg);
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        bail!("kiln-helper's reply carried more than {MAX_FDS} descriptors");
    }
    if msg.msg_flags & libc::MSG_TRUNC != 0 {
        bail!("kiln-helper's reply is longer than {MAX_PAYLOAD} bytes");
    }
    if n == 0 && fds.is_empty() {
        return Ok(None);
    }
    let text = String::from_utf8(buf[..n].to_vec()).context("kiln-helper's reply is not UTF-8")?;
    Ok(Some((text, fds)))
}

fn owned_rights(msg: &libc::msghdr) -> Vec<OwnedFd> {
    let mut fds = Vec::new();
    // SAFETY: the CMSG_* walk stays inside msg_control as the kernel filled it;
    // each SCM_RIGHTS descriptor is new to this process, so owning it is sound.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(c) as *const RawFd;
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    fds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_round_trip() {
        let m = Message::Ok {
            disk: Some(DiskLine {
                name: "loop12".into(),
                size: 1 << 26,
            }),
            parts: vec![
                PartLine {
                    number: 1,
                    start: 1 << 20,
                    size: 8 << 20,
                },
                PartLine {
                    number: 5,
                    start: 9 << 20,
                    size: 512,
                },
            ],
        };
        assert_eq!(Message::parse(&m.render()).unwrap(), m);
        assert_eq!(m.fd_count(), 3);
        let e = Message::Error("image is a FIFO\nsecond line".into());
        assert_eq!(
            Message::parse(&e.render()).unwrap(),
            Message::Error("image is a FIFO second line".into())
        );
    }

    #[test]
    fn bad_replies_are_rejected() {
        for bad in [
            "",
            "OK\n",
            "ok\ndisk sda 5\n",
            "ok\npart 1 2\n",
            "ok\npart 1 2 x\n",
            "ok\npart 1 0 1\ndisk loop0 1\n",
            "okay\n",
        ] {
            assert!(Message::parse(bad).is_err(), "{bad:?}");
        }
        assert!(
            is_loop_name("loop0")
                && !is_loop_name("loop")
                && !is_loop_name("loop1p2")
                && !is_loop_name("../x")
        );
    }

    #[test]
    fn descriptors_travel_with_the_text() {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        use std::os::fd::AsFd;
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let f = std::fs::File::open("/dev/null").unwrap();
        send(a.as_fd(), "ok\n", &[f.as_fd()]).unwrap();
        let (text, fds) = recv(b.as_fd()).unwrap().unwrap();
        assert_eq!((text.as_str(), fds.len()), ("ok\n", 1));
        drop(a);
        assert!(recv(b.as_fd()).unwrap().is_none());
    }
}
