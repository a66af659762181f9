//! Which host ids the namespace's ids map onto, and writing those maps.
//!
//! Root inside is the caller; 1…N inside are the caller's subordinate range, so
//! packages that chown to system users (`_apt`, `messagebus`) get real, distinct
//! owners in the finished image.

use super::syscall::{Linux, Syscall};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// One line of a uid_map/gid_map: `inside outside count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdMaps {
    pub uid: Vec<Extent>,
    pub gid: Vec<Extent>,
    /// Written with newuidmap/newgidmap (true) or directly (caller is root, or has no range).
    pub helpers: bool,
}

/// How many subordinate ids the image needs: Debian's system and dynamic users
/// live below 65536 (nobody is 65534).
pub const WANTED: u32 = 65536;

impl IdMaps {
    pub fn for_caller() -> Result<IdMaps> {
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        if uid == 0 {
            // Host root: identity maps need no helper and keep host-visible owners natural.
            let all = vec![Extent {
                inside: 0,
                outside: 0,
                count: WANTED,
            }];
            return Ok(IdMaps {
                uid: all.clone(),
                gid: all,
                helpers: false,
            });
        }
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_default();
        let sub_u = read_range(Path::new("/etc/subuid"), &user, uid)?;
        let sub_g = read_range(Path::new("/etc/subgid"), &user, uid)?;
        match (sub_u, sub_g) {
            (Some((us, uc)), Some((gs, gc))) => Ok(IdMaps {
                uid: vec![
                    Extent {
                        inside: 0,
                        outside: uid,
                        count: 1,
                    },
                    Extent {
                        inside: 1,
                        outside: us,
                        count: uc.min(WANTED - 1),
                    },
                ],
                gid: vec![
                    Extent {
                        inside: 0,
                        outside: gid,
                        count: 1,
                    },
                    Extent {
                        inside: 1,
                        outside: gs,
                        count: gc.min(WANTED - 1),
                    },
                ],
                helpers: true,
            }),
            _ => Ok(IdMaps::single_for_caller()),
        }
    }

    /// Root inside is the caller and no other id exists: written without helpers.
    pub fn single_for_caller() -> IdMaps {
        let one = |outside| {
            vec![Extent {
                inside: 0,
                outside,
                count: 1,
            }]
        };
        IdMaps {
            uid: one(nix::unistd::getuid().as_raw()),
            gid: one(nix::unistd::getgid().as_raw()),
            helpers: false,
        }
    }

    /// True when the image can hold files of more than one owner.
    pub fn has_range(&self) -> bool {
        self.uid.iter().map(|e| e.count).sum::<u32>() > 1
    }

    /// The message printed when the caller has no subordinate range.
    pub fn single_id_warning(&self) -> Option<String> {
        if self.has_range() {
            return None;
        }
        let user = std::env::var("USER").unwrap_or_else(|_| "$USER".into());
        Some(format!(
            "no subordinate id range for {user} in /etc/subuid and /etc/subgid: kiln records the \
             owners packages and hooks set instead of making them real (slower; symlinks stay \
             root's).\n  for real owners (as root): usermod --add-subuids 100000-165535 \
             --add-subgids 100000-165535 {user}"
        ))
    }

    /// Write the maps of process `pid` (which has just unshared its user namespace).
    pub fn apply(&self, pid: i32) -> Result<()> {
        if self.helpers {
            run_helper("newuidmap", pid, &self.uid)?;
            run_helper("newgidmap", pid, &self.gid)?;
            return Ok(());
        }
        self.write_directly(&Linux, pid, nix::unistd::getuid().is_root())
    }

    /// The maps written to the child's /proc files by the caller itself.
    fn write_directly(&self, sys: &dyn Syscall, pid: i32, caller_is_root: bool) -> Result<()> {
        let proc = PathBuf::from(format!("/proc/{pid}"));
        let write = |file: &str, text: &str| {
            let path = proc.join(file);
            sys.write_file(&path, text)
                .map_err(std::io::Error::from)
                .with_context(|| format!("writing {}", path.display()))
        };
        if !caller_is_root {
            // An unprivileged single mapping requires giving up setgroups first.
            write("setgroups", "deny")?;
        }
        write("uid_map", &render(&self.uid))?;
        write("gid_map", &render(&self.gid))?;
        Ok(())
    }
}

fn render(map: &[Extent]) -> String {
    map.iter()
        .map(|e| format!("{} {} {}\n", e.inside, e.outside, e.count))
        .collect()
}

/// The setuid helpers are looked up by absolute path only: a PATH entry could
/// otherwise substitute a fake that writes whatever map it likes.
fn run_helper(name: &str, pid: i32, map: &[Extent]) -> Result<()> {
    let path = ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .with_context(|| format!("{name} not found in /usr/bin: install the `uidmap` package (apt-get install uidmap)"))?;
    let mut cmd = Command::new(&path);
    cmd.arg(pid.to_string());
    for e in map {
        cmd.args([
            e.inside.to_string(),
            e.outside.to_string(),
            e.count.to_string(),
        ]);
    }
    let out = cmd
        .output()
        .with_context(|| format!("running {}", path.display()))?;
    if !out.status.success() {
        bail!(
            "{} refused the id map ({}): {}\n  check /etc/subuid and /etc/subgid list a range for this user, and that {} is setuid root",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            path.display()
        );
    }
    Ok(())
}

/// The first range for `user` (by name or numeric uid) in a subid file.
fn read_range(file: &Path, user: &str, uid: u32) -> Result<Option<(u32, u32)>> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    Ok(parse_range(&text, user, uid))
}

fn parse_range(text: &str, user: &str, uid: u32) -> Option<(u32, u32)> {
    let uid_s = uid.to_string();
    text.lines()
        .filter_map(|l| {
            let mut f = l.trim().split(':');
            let (who, start, count) = (f.next()?, f.next()?, f.next()?);
            if who != user && who != uid_s {
                return None;
            }
            Some((start.parse().ok()?, count.parse().ok()?))
        })
        .find(|&(_, count): &(u32, u32)| count > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::syscall::{Call, Recorder};

    #[test]
    fn subid_file_matches_name_or_uid() {
        let text = "alice:100000:65536\n# c\nbob:200000:1000\n1001:300000:65536\n";
        assert_eq!(parse_range(text, "alice", 1000), Some((100000, 65536)));
        assert_eq!(parse_range(text, "bob", 1002), Some((200000, 1000)));
        assert_eq!(parse_range(text, "carol", 1001), Some((300000, 65536)));
        assert_eq!(parse_range(text, "dave", 7), None);
    }

    #[test]
    fn maps_render_as_kernel_lines() {
        let m = [
            Extent {
                inside: 0,
                outside: 1000,
                count: 1,
            },
            Extent {
                inside: 1,
                outside: 100000,
                count: 65535,
            },
        ];
        assert_eq!(render(&m), "0 1000 1\n1 100000 65535\n");
    }

    fn single(outside: u32) -> IdMaps {
        let one = vec![Extent {
            inside: 0,
            outside,
            count: 1,
        }];
        IdMaps {
            uid: one.clone(),
            gid: one,
            helpers: false,
        }
    }

    #[test]
    fn an_unprivileged_caller_denies_setgroups_before_writing_the_maps() {
        let rec = Recorder::default();
        single(1000).write_directly(&rec, 42, false).unwrap();
        let write = |f: &str, t: &str| Call::WriteFile(format!("/proc/42/{f}").into(), t.into());
        assert_eq!(
            rec.calls(),
            [
                write("setgroups", "deny"),
                write("uid_map", "0 1000 1\n"),
                write("gid_map", "0 1000 1\n"),
            ]
        );
        let rec = Recorder::default();
        single(0).write_directly(&rec, 42, true).unwrap();
        assert_eq!(
            rec.calls(),
            [write("uid_map", "0 0 1\n"), write("gid_map", "0 0 1\n")]
        );
    }

    #[test]
    fn a_refused_map_names_the_file() {
        let rec = Recorder::failing(
            |c| matches!(c, Call::WriteFile(p, _) if p.ends_with("uid_map")),
            nix::errno::Errno::EPERM,
        );
        let err = single(1000).write_directly(&rec, 42, false).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            format!(
                "writing /proc/42/uid_map: {}",
                std::io::Error::from_raw_os_error(libc::EPERM)
            )
        );
        assert_eq!(rec.calls().len(), 2);
    }
}
