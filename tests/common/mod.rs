//! Shared by the integration tests: run the real commands as an unprivileged
//! user (the product's promise is for ordinary users, and CI runs as root).

#![allow(dead_code)]

pub mod helper;
pub mod qemu;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The unprivileged user `contrib/setup --tests` creates.
pub const TEST_USER: &str = "kilntest";

pub struct Env {
    /// Binaries and flavours copied where the test user can read them.
    pub stage: PathBuf,
    pub user: Option<User>,
}

#[derive(Clone)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    pub name: String,
}

pub fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let user = if nix::unistd::getuid().is_root() {
            let u = nix::unistd::User::from_name(TEST_USER)
                .ok()
                .flatten()
                .unwrap_or_else(|| {
                    panic!("user {TEST_USER} is missing: run `contrib/setup --tests` as root first")
                });
            Some(User {
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
                home: u.dir,
                name: u.name,
            })
        } else {
            None
        };
        remove_stale_stages();
        let stage = PathBuf::from(format!("{STAGE_PREFIX}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&stage);
        std::fs::create_dir_all(stage.join("bin")).unwrap();
        for (name, path) in [
            ("disk-image-create", env!("CARGO_BIN_EXE_disk-image-create")),
            (
                "ramdisk-image-create",
                env!("CARGO_BIN_EXE_ramdisk-image-create"),
            ),
            (
                "disk-image-get-kernel",
                env!("CARGO_BIN_EXE_disk-image-get-kernel"),
            ),
            ("disk-image-boot", env!("CARGO_BIN_EXE_disk-image-boot")),
        ] {
            std::fs::copy(path, stage.join("bin").join(name)).unwrap();
        }
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        copy_tree(&repo.join("flavours"), &stage.join("flavours"));
        copy_tree(&repo.join("dib-lib"), &stage.join("dib-lib"));
        copy_tree(&repo.join("tests/flavours"), &stage.join("test-flavours"));
        make_world_readable(&stage);
        Env { stage, user }
    })
}

const STAGE_PREFIX: &str = "/var/tmp/kiln-tests-stage-";

/// A test process cannot clean up after itself (statics are never dropped), so
/// each one removes the stages of test processes that are gone.
/// The same holds for scratch directories kept in statics (one build shared
/// by several tests): `kiln-test-NAME-PID`.
fn remove_stale_stages() {
    let Ok(dir) = std::fs::read_dir("/var/tmp") else {
        return;
    };
    for e in dir.flatten() {
        let path = e.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let pid = if let Some(pid) = path.to_str().and_then(|p| p.strip_prefix(STAGE_PREFIX)) {
            pid
        } else if name.starts_with("kiln-test-") {
            name.rsplit('-').next().unwrap_or("")
        } else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

fn copy_tree(src: &Path, dst: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(dst)
        .status()
        .unwrap();
    assert!(st.success(), "copying {}", src.display());
}

fn make_world_readable(p: &Path) {
    let st = Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(p)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A directory the test user owns, removed when dropped.
pub struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        Scratch::owned_by(name, env().user.as_ref())
    }

    /// A scratch directory `user` owns (None: whoever runs the tests).
    pub fn owned_by(name: &str, user: Option<&User>) -> Scratch {
        let path = PathBuf::from(format!("/var/tmp/kiln-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        if let Some(u) = user {
            nix::unistd::chown(
                &path,
                Some(nix::unistd::Uid::from_raw(u.uid)),
                Some(nix::unistd::Gid::from_raw(u.gid)),
            )
            .unwrap();
        }
        Scratch { path }
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.path.join(p)
    }

    /// A flavour written by a test: `files` are (relative path, content, executable).
    pub fn flavour(&self, name: &str, files: &[(&str, &str, bool)]) -> PathBuf {
        let dir = self.path.join("flavours").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for (rel, content, exec) in files {
            let p = dir.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, content).unwrap();
            let mode = if *exec { 0o755 } else { 0o644 };
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        make_world_readable(&self.path.join("flavours"));
        self.path.join("flavours")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The user `contrib/setup --tests` creates with no subordinate ids.
pub const SOLO_USER: &str = "kilnsolo";

/// The user without subordinate ids; the tests need to run as root to use it.
pub fn solo_user() -> User {
    assert!(
        nix::unistd::getuid().is_root(),
        "tests of builds without subordinate ids switch to {SOLO_USER}: run them as root"
    );
    let u = nix::unistd::User::from_name(SOLO_USER)
        .ok()
        .flatten()
        .unwrap_or_else(|| {
            panic!("user {SOLO_USER} is missing: run `contrib/setup --tests` as root first")
        });
    for f in ["/etc/subuid", "/etc/subgid"] {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        assert!(
            !text
                .lines()
                .any(|l| l.starts_with(&format!("{SOLO_USER}:"))),
            "{SOLO_USER} has a range in {f}: these tests need a user without one"
        );
    }
    User {
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
        home: u.dir,
        name: u.name,
    }
}

/// A kiln command, run as the test user with a clean environment.
pub fn kiln(bin: &str, args: &[&str]) -> Command {
    kiln_as(env().user.as_ref(), bin, args)
}

/// A kiln command run as `user` (None: as whoever runs the tests).
pub fn kiln_as(user: Option<&User>, bin: &str, args: &[&str]) -> Command {
    let e = env();
    let mut cmd = Command::new(e.stage.join("bin").join(bin));
    cmd.args(args);
    cmd.env_clear();
    cmd.env(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    cmd.env("KILN_BUILTIN_FLAVOURS", e.stage.join("flavours"));
    cmd.stdin(Stdio::null());
    if let Some(u) = user {
        cmd.uid(u.uid).gid(u.gid);
        cmd.env("HOME", &u.home)
            .env("USER", &u.name)
            .env("LOGNAME", &u.name);
        cmd.current_dir(&u.home);
    } else {
        for k in ["HOME", "USER", "LOGNAME"] {
            if let Ok(v) = std::env::var(k) {
                cmd.env(k, v);
            }
        }
    }
    cmd
}

/// ELEMENTS_PATH for the repository's test flavours plus `extra`.
pub fn test_flavours_path(extra: &[&Path]) -> String {
    let mut v: Vec<String> = extra.iter().map(|p| p.display().to_string()).collect();
    v.push(env().stage.join("test-flavours").display().to_string());
    v.join(":")
}

pub fn output_text(o: &Output) -> String {
    format!(
        "status: {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs and insists on success, showing everything on failure.
pub fn run_ok(cmd: &mut Command) -> Output {
    let o = cmd.output().expect("running kiln");
    assert!(o.status.success(), "kiln failed:\n{}", output_text(&o));
    o
}

/// The flavours every heavy test builds on: one set, so they share one cached
/// base tree (test flavours add hooks, not packages).
pub const IMAGE_FLAVOURS: [&str; 3] = ["debian", "vm", "growroot"];

/// Assertions that nothing of a build is left on the host.
/// After a finished build: `expected_outputs` plus the manifest each finished
/// output comes with.
pub fn assert_no_leftovers(tmpdir: &Path, outdir: &Path, expected_outputs: &[&str]) {
    check_leftovers(tmpdir, outdir, expected_outputs, true)
}

/// After a build that did not finish: exactly `present` (files that were there
/// before it), no manifest.
pub fn assert_no_leftovers_after_failure(tmpdir: &Path, outdir: &Path, present: &[&str]) {
    check_leftovers(tmpdir, outdir, present, false)
}

fn check_leftovers(tmpdir: &Path, outdir: &Path, expected_outputs: &[&str], finished: bool) {
    // Build directories live in TMPDIR: it must be empty again.
    let left: Vec<_> = std::fs::read_dir(tmpdir)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "build directory left in {}: {left:?}",
        tmpdir.display()
    );
    // No mount of kiln's in any process's view.
    let needle = tmpdir.display().to_string();
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(mi) = std::fs::read_to_string(p.path().join("mountinfo")) {
            assert!(
                !mi.contains(&needle),
                "a mount under {needle} is left in {}",
                p.path().display()
            );
        }
        // No process of the build left: none has its cwd or root under the build dir.
        for link in ["cwd", "root"] {
            if let Ok(t) = std::fs::read_link(p.path().join(link)) {
                assert!(
                    !t.starts_with(tmpdir),
                    "process {} is left in {}",
                    p.path().display(),
                    t.display()
                );
            }
        }
    }
    let mut names: Vec<String> = std::fs::read_dir(outdir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.retain(|n| n != "tmp" && n != "flavours");
    names.sort();
    let mut want: Vec<String> = expected_outputs.iter().map(|s| s.to_string()).collect();
    // Every finished build writes NAME.manifest.json beside its outputs.
    const IMAGE_EXTS: [&str; 9] = [
        "qcow2",
        "raw",
        "vhd",
        "vmdk",
        "tar",
        "tgz",
        "squashfs",
        "kernel",
        "initramfs",
    ];
    for name in expected_outputs.iter().filter(|_| finished) {
        if let Some((stem, ext)) = name.rsplit_once('.') {
            let manifest = format!("{stem}.manifest.json");
            if IMAGE_EXTS.contains(&ext) && !want.contains(&manifest) {
                want.push(manifest);
            }
        }
    }
    want.sort();
    assert_eq!(
        names,
        want,
        "unexpected files in the output directory {}",
        outdir.display()
    );
}

/// Gives `p` to the test user (kiln runs as that user).
pub fn chown_to_user(p: &Path) {
    if let Some(u) = &env().user {
        nix::unistd::chown(
            p,
            Some(nix::unistd::Uid::from_raw(u.uid)),
            Some(nix::unistd::Gid::from_raw(u.gid)),
        )
        .unwrap();
    }
}

/// Gives `p` and everything below it to the test user.
pub fn chown_tree_to_user(p: &Path) {
    if let Some(u) = &env().user {
        let st = Command::new("chown")
            .arg("-R")
            .arg(format!("{}:{}", u.uid, u.gid))
            .arg(p)
            .status()
            .unwrap();
        assert!(st.success());
    }
}

/// A scratch directory with a `tmp` inside it that the test user owns (the
/// build's TMPDIR, so leftovers are easy to see).
pub fn scratch_with_tmp(name: &str) -> (Scratch, PathBuf) {
    let s = Scratch::new(name);
    let tmp = s.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    if let Some(u) = &env().user {
        nix::unistd::chown(
            &tmp,
            Some(nix::unistd::Uid::from_raw(u.uid)),
            Some(nix::unistd::Gid::from_raw(u.gid)),
        )
        .unwrap();
    }
    (s, tmp)
}

/// Runs `cmd` and sends `sig` when a stderr line contains `marker`: to kiln's
/// whole process group with `group` (as Ctrl-C does), else to kiln alone.
/// Returns the exit status and the stderr seen; insists the marker was reached.
pub fn signal_at(
    cmd: Command,
    marker: &'static str,
    sig: nix::sys::signal::Signal,
    group: bool,
) -> (std::process::ExitStatus, String) {
    let (status, seen, _) = signal_when(cmd, marker, || Some(()), sig, group);
    (status, seen)
}

/// As `signal_at`, but after the marker waits (up to a minute) for `ready` to
/// see what the signal must meet, so a kill cannot land before it; returns
/// what `ready` saw last, None if it never did.
pub fn signal_when<T: Send + 'static>(
    mut cmd: Command,
    marker: &'static str,
    mut ready: impl FnMut() -> Option<T> + Send + 'static,
    sig: nix::sys::signal::Signal,
    group: bool,
) -> (std::process::ExitStatus, String, Option<T>) {
    use std::io::{BufRead, BufReader};
    use std::time::{Duration, Instant};
    if group {
        cmd.process_group(0);
    }
    let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut seen = String::new();
        let mut saw = None;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains(marker) {
                let deadline = Instant::now() + Duration::from_secs(60);
                saw = loop {
                    match ready() {
                        None if Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(10))
                        }
                        found => break found,
                    }
                };
                let _ = if group {
                    nix::sys::signal::killpg(pid, sig)
                } else {
                    nix::sys::signal::kill(pid, sig)
                };
            }
        }
        (seen, saw)
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(900),
            "kiln did not stop after {sig}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let (seen, saw) = reader.join().unwrap();
    assert!(
        seen.contains(marker),
        "the build never reached {marker:?}:\n{seen}"
    );
    (status, seen, saw)
}
