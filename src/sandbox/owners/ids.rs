//! The user and group ids a job's processes believe they have, without
//! subordinate ids (fakeroot's model).
//!
//! Only root exists in kiln's namespace, so `setuid(_apt)` cannot really
//! happen. It is answered instead: each process gets credentials of its own,
//! changed by the setuid family under the kernel's rules (privileged while the
//! effective uid is 0) and reported by the getuid family. apt's privilege drop
//! then succeeds and verifies, as it does under fakeroot; the process keeps
//! running as real root.
//!
//! Credentials belong to a thread group and are inherited: a process kiln has
//! not seen takes its nearest known ancestor's (fork and exec keep them). An
//! entry is tied to its process's start time, so a recycled pid never inherits
//! a dead process's ids.

use super::super::idmap::WANTED;
use nix::errno::Errno;
use std::collections::HashMap;

const UNCHANGED: u32 = u32::MAX;
const NGROUPS_MAX: usize = 65536;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Creds {
    pub uid: [u32; 3],
    pub gid: [u32; 3],
    pub fsuid: u32,
    pub fsgid: u32,
    pub groups: Vec<u32>,
}

impl Creds {
    pub fn root() -> Creds {
        Creds {
            uid: [0; 3],
            gid: [0; 3],
            fsuid: 0,
            fsgid: 0,
            groups: Vec::new(),
        }
    }

    /// CAP_SETUID and CAP_SETGID go with an effective uid of 0.
    fn privileged(&self) -> bool {
        self.uid[1] == 0
    }
}

/// Which id set a call changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Set {
    Uid,
    Gid,
}

/// setuid(2)/setgid(2).
pub fn set_one(c: &mut Creds, which: Set, id: u32) -> Result<(), Errno> {
    check(id)?;
    let privileged = c.privileged();
    let ids = ids_of(c, which);
    if privileged {
        *ids = [id; 3];
    } else if ids[0] == id || ids[2] == id {
        ids[1] = id;
    } else {
        return Err(Errno::EPERM);
    }
    sync_fs(c, which);
    Ok(())
}

/// setreuid(2)/setregid(2).
pub fn set_re(c: &mut Creds, which: Set, r: u32, e: u32) -> Result<(), Errno> {
    check(r)?;
    check(e)?;
    let privileged = c.privileged();
    let ids = ids_of(c, which);
    let old = *ids;
    if !privileged {
        let r_ok = r == UNCHANGED || r == old[0] || r == old[1];
        let e_ok = e == UNCHANGED || old.contains(&e);
        if !r_ok || !e_ok {
            return Err(Errno::EPERM);
        }
    }
    if r != UNCHANGED {
        ids[0] = r;
    }
    if e != UNCHANGED {
        ids[1] = e;
    }
    if r != UNCHANGED || (e != UNCHANGED && e != old[0]) {
        ids[2] = ids[1];
    }
    sync_fs(c, which);
    Ok(())
}

/// setresuid(2)/setresgid(2).
pub fn set_res(c: &mut Creds, which: Set, new: [u32; 3]) -> Result<(), Errno> {
    for id in new {
        check(id)?;
    }
    let privileged = c.privileged();
    let ids = ids_of(c, which);
    if !privileged && new.iter().any(|&id| id != UNCHANGED && !ids.contains(&id)) {
        return Err(Errno::EPERM);
    }
    for (slot, id) in ids.iter_mut().zip(new) {
        if id != UNCHANGED {
            *slot = id;
        }
    }
    sync_fs(c, which);
    Ok(())
}

/// setfsuid(2)/setfsgid(2): returns the previous value, changes it only when
/// allowed, never fails.
pub fn set_fs(c: &mut Creds, which: Set, id: u32) -> u32 {
    let privileged = c.privileged();
    let (ids, fs) = match which {
        Set::Uid => (c.uid, &mut c.fsuid),
        Set::Gid => (c.gid, &mut c.fsgid),
    };
    let old = *fs;
    if id < WANTED && (privileged || ids.contains(&id) || id == old) {
        *fs = id;
    }
    old
}

/// setgroups(2).
pub fn set_groups(c: &mut Creds, groups: Vec<u32>) -> Result<(), Errno> {
    if groups.len() > NGROUPS_MAX {
        return Err(Errno::EINVAL);
    }
    for &g in &groups {
        if g >= WANTED {
            return Err(Errno::EINVAL);
        }
    }
    if !c.privileged() {
        return Err(Errno::EPERM);
    }
    c.groups = groups;
    Ok(())
}

/// An id a subordinate range would map (or "unchanged").
fn check(id: u32) -> Result<(), Errno> {
    if id == UNCHANGED || id < WANTED {
        Ok(())
    } else {
        Err(Errno::EINVAL)
    }
}

fn ids_of(c: &mut Creds, which: Set) -> &mut [u32; 3] {
    match which {
        Set::Uid => &mut c.uid,
        Set::Gid => &mut c.gid,
    }
}

/// The filesystem id follows the effective id, as the kernel keeps it.
fn sync_fs(c: &mut Creds, which: Set) {
    match which {
        Set::Uid => c.fsuid = c.uid[1],
        Set::Gid => c.fsgid = c.gid[1],
    }
}

/// Every process's believed credentials.
#[derive(Default)]
pub struct Table {
    /// tgid → (start time, credentials).
    known: HashMap<u32, (u64, Creds)>,
}

impl Table {
    /// The credentials of the thread group `tid` belongs to (inherited when
    /// unknown); `None` when the process is gone.
    pub fn get(&mut self, tid: u32) -> Option<(u32, Creds)> {
        let (tgid, _) = status(tid)?;
        let mut chain = Vec::new();
        let mut pid = tgid;
        let found = loop {
            let start = start_time(pid)?;
            if let Some((s, c)) = self.known.get(&pid) {
                if *s == start {
                    break c.clone();
                }
                self.known.remove(&pid);
            }
            chain.push((pid, start));
            match status(pid) {
                Some((_, parent)) if parent > 1 && chain.len() < 64 => pid = parent,
                // PID 1 (the supervisor) or beyond: the job started as root.
                _ => break Creds::root(),
            }
        };
        for (p, s) in chain {
            self.known.insert(p, (s, found.clone()));
        }
        Some((tgid, found))
    }

    pub fn put(&mut self, tgid: u32, creds: Creds) {
        if let Some(start) = start_time(tgid) {
            self.known.insert(tgid, (start, creds));
        }
    }
}

/// (Tgid, PPid) of a task.
fn status(pid: u32) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u32> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
    };
    Some((field("Tgid:")?, field("PPid:")?))
}

/// Field 22 of /proc/PID/stat, after the parenthesised command name (which
/// may itself contain spaces and parentheses).
fn start_time(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_drops_to_apt_for_good_with_setuid() {
        let mut c = Creds::root();
        set_groups(&mut c, vec![65534]).unwrap();
        set_one(&mut c, Set::Gid, 65534).unwrap();
        set_one(&mut c, Set::Uid, 42).unwrap();
        assert_eq!(c.uid, [42; 3]);
        assert_eq!(c.gid, [65534; 3]);
        assert_eq!(c.fsuid, 42);
        // No way back, as with a real drop.
        assert_eq!(set_one(&mut c, Set::Uid, 0), Err(Errno::EPERM));
        assert_eq!(set_groups(&mut c, vec![]), Err(Errno::EPERM));
    }

    #[test]
    fn seteuid_keeps_the_saved_id_so_root_comes_back() {
        let mut c = Creds::root();
        set_res(&mut c, Set::Uid, [UNCHANGED, 42, UNCHANGED]).unwrap();
        assert_eq!(c.uid, [0, 42, 0]);
        assert_eq!(
            set_res(&mut c, Set::Uid, [UNCHANGED, 7, UNCHANGED]),
            Err(Errno::EPERM)
        );
        set_res(&mut c, Set::Uid, [UNCHANGED, 0, UNCHANGED]).unwrap();
        assert_eq!(c.uid, [0; 3]);
    }

    #[test]
    fn setreuid_updates_the_saved_id_as_the_kernel_does() {
        let mut c = Creds::root();
        set_re(&mut c, Set::Uid, UNCHANGED, 42).unwrap();
        assert_eq!(c.uid, [0, 42, 42]);
    }

    #[test]
    fn ids_a_range_could_not_map_are_invalid() {
        let mut c = Creds::root();
        assert_eq!(set_one(&mut c, Set::Uid, 70000), Err(Errno::EINVAL));
        assert_eq!(set_groups(&mut c, vec![1, 70000]), Err(Errno::EINVAL));
        assert_eq!(set_fs(&mut c, Set::Uid, 70000), 0);
        assert_eq!(c.fsuid, 0);
    }

    #[test]
    fn this_process_is_found_and_an_entry_is_inherited_by_children() {
        let mut t = Table::default();
        let me = std::process::id();
        let (tgid, c) = t.get(me).unwrap();
        assert_eq!(tgid, me);
        assert_eq!(c, Creds::root());
        let mut apt = Creds::root();
        set_one(&mut apt, Set::Uid, 42).unwrap();
        t.put(me, apt.clone());
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let got = t.get(child.id()).map(|(_, c)| c);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(got, Some(apt));
    }

    #[test]
    fn start_time_survives_a_command_name_with_parentheses() {
        assert!(start_time(std::process::id()).is_some());
        assert!(start_time(u32::MAX - 1).is_none());
    }
}
