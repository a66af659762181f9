//! kiln-helper installed the two ways README describes (setuid root in a
//! temporary prefix, or through sudo), test users to run it as, and disk
//! images for it to attach.

use std::fs::File;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// Where README's sudo install puts the helper, and the sudoers file names it.
pub const SUDO_PROGRAM: &str = "/usr/local/libexec/kiln/kiln-helper";
const PREFIX: &str = "/var/tmp/kiln-helper-prefix-";

#[derive(Clone, Debug)]
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

fn lookup(name: &str) -> Option<TestUser> {
    let u = nix::unistd::User::from_name(name).ok().flatten()?;
    Some(TestUser {
        name: name.to_string(),
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
    })
}

/// The unprivileged user `contrib/setup --tests` creates.
pub fn user() -> TestUser {
    lookup(super::TEST_USER).unwrap_or_else(|| {
        panic!(
            "user {} is missing: run `contrib/setup --tests` as root first",
            super::TEST_USER
        )
    })
}

/// A second unprivileged user, for requests about the first one's devices.
pub fn other_user() -> TestUser {
    static U: OnceLock<TestUser> = OnceLock::new();
    U.get_or_init(|| {
        let name = "kilntest2";
        if lookup(name).is_none() {
            run(Command::new("useradd").args([
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ]));
        }
        lookup(name).expect("useradd kilntest2")
    })
    .clone()
}

/// A root-owned prefix of this test process's own, readable by everyone
/// (prefixes of test processes that are gone are removed).
fn prefix() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        for old in std::fs::read_dir("/var/tmp").unwrap().flatten() {
            let name = old.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix(&PREFIX["/var/tmp/".len()..]) {
                if !Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_dir_all(old.path());
                }
            }
        }
        let prefix = PathBuf::from(format!("{PREFIX}{}", std::process::id()));
        std::fs::create_dir_all(&prefix).unwrap();
        std::fs::set_permissions(&prefix, std::fs::Permissions::from_mode(0o755)).unwrap();
        prefix
    })
}

/// The helper setuid root in the test prefix.
pub fn install_setuid() -> PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        copy_in(
            Path::new(env!("CARGO_BIN_EXE_kiln-helper")),
            &prefix().join("libexec/kiln-helper"),
            0o4755,
        )
    })
    .clone()
}

/// The helper as built, not setuid: what an unprivileged user running it gets.
pub fn install_unprivileged() -> PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        copy_in(
            Path::new(env!("CARGO_BIN_EXE_kiln-helper")),
            &prefix().join("libexec/kiln-helper-plain"),
            0o755,
        )
    })
    .clone()
}

/// A copy of the running test binary that the test user can run (the build
/// directory may not be reachable for it).
pub fn runnable_test_binary() -> PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        copy_in(
            &exe,
            &prefix().join("bin").join(exe.file_name().unwrap()),
            0o755,
        )
    })
    .clone()
}

/// The helper through sudo, as README says: the binary 0755 at SUDO_PROGRAM,
/// contrib/sudoers.d/kiln in /etc/sudoers.d (0440), the test user in group kiln.
pub fn install_sudo() -> PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        copy_in(
            Path::new(env!("CARGO_BIN_EXE_kiln-helper")),
            Path::new(SUDO_PROGRAM),
            0o755,
        );
        let sudoers = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/sudoers.d/kiln");
        let tmp = Path::new("/etc/sudoers.d/.kiln.tmp");
        std::fs::create_dir_all("/etc/sudoers.d").unwrap();
        std::fs::copy(&sudoers, tmp).unwrap();
        std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o440)).unwrap();
        std::fs::rename(tmp, "/etc/sudoers.d/kiln").unwrap();
        run(Command::new("visudo").arg("-c"));
        run(Command::new("groupadd").args(["-f", "kiln"]));
        run(Command::new("usermod").args(["-aG", "kiln", super::TEST_USER]));
        PathBuf::from(SUDO_PROGRAM)
    })
    .clone()
}

/// Copies `program` to `path` (root's, `mode`) by rename, so that a copy
/// someone is running is never written over. install(1) writes it: a
/// descriptor open for writing in this process would be inherited by any
/// child another test thread forks meanwhile, and exec of the copy would fail
/// with ETXTBSY until that child execs.
fn copy_in(program: &Path, path: &Path, mode: u32) -> PathBuf {
    let dir = path.parent().unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let tmp = dir.join(format!(
        ".copy-{}",
        path.file_name().unwrap().to_string_lossy()
    ));
    run(Command::new("install")
        .args(["-o", "root", "-g", "root", "-m", &format!("{mode:o}")])
        .arg(program)
        .arg(&tmp));
    std::fs::rename(&tmp, path).unwrap();
    path.to_path_buf()
}

/// `argv` run as `user` (real and effective ids, and the user's groups), with a
/// clean environment: how an ordinary user runs the helper.
pub fn as_user(user: &TestUser, argv: &[&std::ffi::OsStr]) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={}", user.uid))
        .arg(format!("--regid={}", user.gid))
        .arg("--init-groups");
    cmd.args(argv);
    cmd.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    cmd
}

/// A sparse image of `mib` MiB partitioned by the sfdisk `script`, owned by `owner`.
pub fn image(path: &Path, mib: u64, script: &str, owner: &TestUser) -> PathBuf {
    File::create(path).unwrap().set_len(mib << 20).unwrap();
    sfdisk(path, script);
    nix::unistd::chown(path, Some(owner.uid.into()), Some(owner.gid.into())).unwrap();
    path.to_path_buf()
}

/// Writes a new table with sfdisk (on a file or a device).
pub fn sfdisk(path: &Path, script: &str) {
    use std::io::Write;
    let mut child = Command::new("sfdisk")
        .args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(path)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk {}", path.display());
}

/// (number, start, size) in bytes of each partition, as sfdisk reads `path`.
pub fn expected_partitions(path: &Path) -> Vec<(u32, u64, u64)> {
    let out = Command::new("sfdisk").arg("-J").arg(path).output().unwrap();
    assert!(out.status.success(), "sfdisk -J {}", path.display());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let table = &v["partitiontable"];
    let sector = table["sectorsize"].as_u64().unwrap_or(512);
    let parts = table["partitions"].as_array().unwrap();
    parts
        .iter()
        .map(|p| {
            let node = p["node"].as_str().unwrap();
            let digits = node.len() - node.bytes().rev().take_while(u8::is_ascii_digit).count();
            (
                node[digits..].parse().unwrap(),
                p["start"].as_u64().unwrap() * sector,
                p["size"].as_u64().unwrap() * sector,
            )
        })
        .collect()
}

/// Loop devices whose backing file is `image`.
pub fn loop_devices_of(image: &Path) -> Vec<String> {
    let want = image.canonicalize().unwrap_or_else(|_| image.to_path_buf());
    let mut found = Vec::new();
    for dev in std::fs::read_dir("/sys/block").unwrap().flatten() {
        let name = dev.file_name().to_string_lossy().into_owned();
        if let Ok(backing) = std::fs::read_to_string(dev.path().join("loop/backing_file")) {
            let backing = backing.trim_end_matches('\n');
            if Path::new(backing.trim_end_matches(" (deleted)")) == want {
                found.push(name);
            }
        }
    }
    found
}

/// Waits up to 10 s for every loop device backed by `image` to go.
pub fn assert_no_loop_device(image: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let left = loop_devices_of(image);
        if left.is_empty() {
            return;
        }
        if std::time::Instant::now() > deadline {
            let all = Command::new("losetup").arg("-a").output().unwrap();
            panic!(
                "{left:?} still attached to {} after 10 s; losetup -a:\n{}",
                image.display(),
                String::from_utf8_lossy(&all.stdout)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The mode bits of `path`, for the install checks.
pub fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().mode() & 0o7777
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
