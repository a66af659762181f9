//! kiln-helper as an unprivileged user meets it: installed setuid root or
//! through sudo, run as the test user, given good and hostile requests. Every
//! refusal is checked for its exit status and for naming what was refused.
//! Run as root (the tests install the helper and create users).

mod common;

use common::helper::{
    as_user, assert_no_loop_device, expected_partitions, image, install_setuid, install_sudo,
    install_unprivileged, loop_devices_of, other_user, runnable_test_binary, sfdisk, user,
    TestUser,
};
use common::Scratch;
use kiln::helper::client::{exchange, Attached, Devices, Helper, Mode, Partition, Reply};
use kiln::helper::protocol::Message;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
/// Three partitions: 8 MiB, 16 MiB and the rest of a 64 MiB disk.
const THREE: &str = "label: gpt\n,8M\n,16M\n,\n";

fn setuid_helper(verb: &str) -> Command {
    as_user(&user(), &[install_setuid().as_os_str(), OsStr::new(verb)])
}

fn sudo_helper(verb: &str) -> Command {
    let program = install_sudo();
    as_user(
        &user(),
        &[
            OsStr::new("sudo"),
            OsStr::new("-n"),
            program.as_os_str(),
            OsStr::new(verb),
        ],
    )
}

fn open_rw(path: &Path) -> File {
    File::options().read(true).write(true).open(path).unwrap()
}

fn stdin(f: impl Into<OwnedFd>) -> Stdio {
    Stdio::from(f.into())
}

fn dup(fd: BorrowedFd) -> Stdio {
    Stdio::from(fd.try_clone_to_owned().unwrap())
}

fn show(r: &Reply) -> String {
    format!(
        "status {}, reply {:?}, stderr:\n{}",
        r.status, r.message, r.stderr
    )
}

/// The helper refused: status 1, the reason on stderr and (when it could
/// reply) in an `error` reply, naming `what`.
fn assert_refused(r: &Reply, what: &str) {
    assert_eq!(
        r.status.code(),
        Some(1),
        "expected a refusal naming {what:?}; {}",
        show(r)
    );
    assert!(
        r.stderr.contains(what),
        "stderr does not name {what:?}; {}",
        show(r)
    );
    assert!(
        r.fds.is_empty(),
        "a refusal carried descriptors; {}",
        show(r)
    );
    match &r.message {
        Some(Message::Error(m)) => assert!(m.contains(what), "{}", show(r)),
        None => {}
        Some(m) => panic!("refusal replied {m:?}"),
    }
}

/// The devices of an `ok` reply; the whole reply shown if it is not one.
fn devices(r: Reply) -> Devices {
    let shown = show(&r);
    r.devices().unwrap_or_else(|e| panic!("{e:#}; {shown}"))
}

fn attach(cmd: Command, image: &Path) -> Attached {
    let (disk, partitions) = devices(exchange(cmd, stdin(open_rw(image))).unwrap());
    let (line, disk) = disk.expect("attach names the disk");
    Attached {
        name: line.name,
        size: line.size,
        disk,
        partitions,
    }
}

/// Detaches `a` with `cmd`, closes it, and expects the image free.
fn detach(cmd: Command, a: Attached, image: &Path) {
    let r = exchange(cmd, dup(a.disk.as_fd())).unwrap();
    assert!(r.status.success() && r.message.is_some(), "{}", show(&r));
    drop(a);
    assert_no_loop_device(image);
}

/// attach, run as the test user with `input` on standard input, is refused naming `what`.
fn attach_refused(input: impl Into<OwnedFd>, what: &str) {
    assert_refused(
        &exchange(setuid_helper("attach"), stdin(input)).unwrap(),
        what,
    );
}

fn device_size(fd: BorrowedFd) -> u64 {
    nix::ioctl_read_bad!(
        blk_getsize64,
        nix::request_code_read!(0x12, 114, std::mem::size_of::<usize>()),
        u64
    );
    let mut size = 0;
    unsafe { blk_getsize64(fd.as_raw_fd(), &mut size) }.unwrap();
    size
}

/// Every partition as sfdisk sees it in the image, with a descriptor of the
/// right size; and the kernel has exactly these.
fn assert_partitions_match(name: &str, parts: &[Partition], image: &Path) {
    let got: Vec<(u32, u64, u64)> = parts.iter().map(|p| (p.number, p.start, p.size)).collect();
    assert_eq!(got, expected_partitions(image));
    for p in parts {
        assert_eq!(device_size(p.fd.as_fd()), p.size, "partition {}", p.number);
        let sys = format!("/sys/block/{name}/{name}p{}", p.number);
        let start: u64 = std::fs::read_to_string(format!("{sys}/start"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(start * 512, p.start, "{sys}");
    }
    let kernel = std::fs::read_dir(format!("/sys/block/{name}"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("partition").exists())
        .count();
    assert_eq!(kernel, parts.len(), "the kernel's partitions of {name}");
}

/// Writing through a partition's descriptor lands at its offset in the image.
fn assert_writes_land(p: &Partition, image: &Path) {
    let f = File::from(p.fd.try_clone().unwrap());
    let marker = format!("kiln partition {} at {}", p.number, p.start);
    f.write_all_at(marker.as_bytes(), 4096).unwrap();
    f.sync_all().unwrap();
    let mut back = vec![0u8; marker.len()];
    File::open(image)
        .unwrap()
        .read_exact_at(&mut back, p.start + 4096)
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&back), marker);
}

fn scratch_image(s: &Scratch, name: &str) -> PathBuf {
    image(&s.join(name), 64, THREE, &user())
}

/// A three-partition image of the test user's, attached through the setuid helper.
fn attached_image(test: &str) -> (Scratch, PathBuf, Attached) {
    let s = Scratch::new(test);
    let img = scratch_image(&s, "disk.img");
    let a = attach(setuid_helper("attach"), &img);
    (s, img, a)
}

#[test]
fn attach_setuid_gives_the_partitions_at_their_offsets() {
    let (_s, img, a) = attached_image("helper-attach");
    assert!(a.name.starts_with("loop"), "{}", a.name);
    assert_eq!((a.size, device_size(a.disk.as_fd())), (64 * MIB, 64 * MIB));
    assert_eq!(loop_devices_of(&img), vec![a.name.clone()]);
    assert_partitions_match(&a.name, &a.partitions, &img);
    for p in &a.partitions {
        assert_writes_land(p, &img);
    }
    detach(setuid_helper("detach"), a, &img);
}

#[test]
fn attach_through_sudo_answers_to_the_sudo_user() {
    let s = Scratch::new("helper-sudo");
    let img = scratch_image(&s, "disk.img");
    // sudo keeps LANG (and PAM may add it): there it is cleared, not refused.
    let mut cmd = sudo_helper("attach");
    cmd.env("LANG", "C.UTF-8");
    let a = attach(cmd, &img);
    assert_partitions_match(&a.name, &a.partitions, &img);
    assert_writes_land(&a.partitions[1], &img);
    // The caller is SUDO_UID, not root: root's file is not the test user's.
    let root_file = s.join("root.img");
    File::create(&root_file).unwrap().set_len(MIB).unwrap();
    let r = exchange(sudo_helper("attach"), stdin(open_rw(&root_file))).unwrap();
    assert_refused(
        &r,
        &format!("owned by uid 0, not by you (uid {})", user().uid),
    );
    detach(sudo_helper("detach"), a, &img);
}

#[test]
fn locate_finds_a_setuid_install_and_reports_install_steps_otherwise() {
    let program = install_setuid();
    let h = Helper::locate(Some(&program)).unwrap();
    assert_eq!(
        (h.program.as_path(), h.mode),
        (program.as_path(), Mode::Setuid)
    );
    let missing = Helper::locate(Some(Path::new("/nonexistent/kiln-helper")))
        .err()
        .unwrap()
        .to_string();
    for step in [
        "install -o root -g root -m 4755",
        "cp contrib/sudoers.d/* /etc/sudoers.d/",
        "visudo -c",
        "usermod -aG kiln",
    ] {
        assert!(missing.contains(step), "{missing}");
    }
}

// ---- hostile standard input for attach ----

#[test]
fn refuses_a_symlink() {
    let s = Scratch::new("helper-symlink");
    let img = scratch_image(&s, "disk.img");
    let link = s.join("link.img");
    std::os::unix::fs::symlink(&img, &link).unwrap();
    // A descriptor of the link itself: the only way a symlink reaches stdin.
    attach_refused(
        File::options()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
            .open(&link)
            .unwrap(),
        "standard input is a symbolic link",
    );
    // Opening through the link yields the file it names: a link to someone
    // else's file is refused as their file.
    let root_file = s.join("root.img");
    File::create(&root_file).unwrap().set_len(MIB).unwrap();
    std::os::unix::fs::symlink(&root_file, s.join("to-root.img")).unwrap();
    attach_refused(open_rw(&s.join("to-root.img")), "owned by uid 0");
    assert_no_loop_device(&img);
}

#[test]
fn refuses_an_o_path_descriptor() {
    let s = Scratch::new("helper-opath");
    let img = scratch_image(&s, "disk.img");
    attach_refused(
        File::options()
            .read(true)
            .custom_flags(libc::O_PATH)
            .open(&img)
            .unwrap(),
        "opened with O_PATH",
    );
    assert_no_loop_device(&img);
}

#[test]
fn refuses_the_image_as_a_path_argument() {
    let s = Scratch::new("helper-patharg");
    let img = scratch_image(&s, "disk.img");
    let cmd = as_user(
        &user(),
        &[
            install_setuid().as_os_str(),
            OsStr::new("attach"),
            img.as_os_str(),
        ],
    );
    let r = exchange(cmd, Stdio::null()).unwrap();
    assert_refused(&r, "extra arguments refused");
    assert_no_loop_device(&img);
}

#[test]
fn refuses_a_hard_linked_image() {
    let s = Scratch::new("helper-hardlink");
    let img = scratch_image(&s, "disk.img");
    std::fs::hard_link(&img, s.join("second-name.img")).unwrap();
    attach_refused(open_rw(&img), "has 2 hard links");
    assert_no_loop_device(&img);
}

#[test]
fn refuses_a_deleted_image() {
    let s = Scratch::new("helper-deleted");
    let img = scratch_image(&s, "disk.img");
    let f = open_rw(&img);
    std::fs::remove_file(&img).unwrap();
    attach_refused(f, "has no name");
}

#[test]
fn refuses_another_users_file() {
    let s = Scratch::new("helper-otheruser");
    let img = image(&s.join("theirs.img"), 64, THREE, &other_user());
    attach_refused(
        open_rw(&img),
        &format!(
            "owned by uid {}, not by you (uid {})",
            other_user().uid,
            user().uid
        ),
    );
    assert_no_loop_device(&img);
}

#[test]
fn refuses_a_device_file() {
    attach_refused(
        open_rw(Path::new("/dev/null")),
        "standard input is a character device",
    );
}

#[test]
fn refuses_a_fifo() {
    let s = Scratch::new("helper-fifo");
    let fifo = s.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    nix::unistd::chown(&fifo, Some(user().uid.into()), None).unwrap();
    attach_refused(open_rw(&fifo), "standard input is a FIFO");
}

#[test]
fn refuses_a_directory() {
    let s = Scratch::new("helper-dir");
    attach_refused(
        File::open(&s.path).unwrap(),
        "standard input is a directory",
    );
}

#[test]
fn refuses_a_read_only_descriptor() {
    let s = Scratch::new("helper-readonly");
    let img = scratch_image(&s, "disk.img");
    attach_refused(File::open(&img).unwrap(), "opened read-only");
    assert_no_loop_device(&img);
}

#[test]
fn refuses_a_proc_file() {
    // Regular, writable, but a loop device's kernel threads would write it
    // with their own credentials: only data filesystems are allowed.
    attach_refused(open_rw(Path::new("/proc/self/comm")), "is on proc");
}

/// A DOS boot record with `entries` (type, first sector, sectors).
fn mbr(entries: &[(u8, u32, u32)]) -> Vec<u8> {
    let mut sector = vec![0u8; 512];
    for (i, &(kind, first, count)) in entries.iter().enumerate() {
        let e = &mut sector[446 + 16 * i..462 + 16 * i];
        e[4] = kind;
        e[8..12].copy_from_slice(&first.to_le_bytes());
        e[12..16].copy_from_slice(&count.to_le_bytes());
    }
    sector[510..].copy_from_slice(&[0x55, 0xaa]);
    sector
}

#[test]
fn refuses_a_hostile_partition_table_and_detaches_again() {
    let s = Scratch::new("helper-badtable");
    let disk_sectors = (64 * MIB / 512) as u32;
    // Each table is read after the device is bound: a refusal must undo that.
    // (name, bytes to write at offsets, what the refusal says)
    type Case = (&'static str, Vec<(u64, Vec<u8>)>, &'static str);
    let cases: [Case; 5] = [
        (
            "past-end",
            vec![(0, mbr(&[(0x83, 2048, disk_sectors)]))],
            "partition 1 (bytes 1048576..+67108864) lies past the end of the device",
        ),
        (
            "overlap",
            vec![(0, mbr(&[(0x83, 2048, 4096), (0x83, 4096, 4096)]))],
            "partitions 1 and 2 overlap",
        ),
        (
            "beyond-u32",
            vec![(0, mbr(&[(0x83, u32::MAX, u32::MAX)]))],
            "lies past the end of the device",
        ),
        // An extended partition whose boot record names itself as the next one.
        (
            "ebr-loop",
            vec![
                (0, mbr(&[(0x05, 2048, 8192)])),
                (2048 * 512, mbr(&[(0x83, 1, 100), (0x05, 0, 100)])),
            ],
            "the chain of logical partitions does not end",
        ),
        (
            "gpt-crc",
            vec![(512 + 24, vec![0xff])],
            "the GPT header checksum does not match",
        ),
    ];
    for (name, writes, says) in cases {
        let img = scratch_image(&s, &format!("{name}.img"));
        let f = open_rw(&img);
        if name != "gpt-crc" {
            f.write_all_at(&vec![0u8; MIB as usize], 0).unwrap();
        }
        for (at, bytes) in writes {
            f.write_all_at(&bytes, at).unwrap();
        }
        attach_refused(f, says);
        assert_no_loop_device(&img);
    }
}

// ---- hostile invocations ----

#[test]
fn refuses_argc_0() {
    let program =
        std::ffi::CString::new(install_setuid().into_os_string().into_encoded_bytes()).unwrap();
    let u = user();
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let null = File::open("/dev/null").unwrap();
    let empty: [*const libc::c_char; 1] = [std::ptr::null()];
    // SAFETY: between fork and exec the child makes raw system calls only.
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => unsafe {
            libc::dup2(null.as_raw_fd(), 0);
            libc::dup2(null.as_raw_fd(), 1);
            libc::dup2(write_end.as_raw_fd(), 2);
            if libc::setgroups(0, std::ptr::null()) == 0
                && libc::setresgid(u.gid, u.gid, u.gid) == 0
                && libc::setresuid(u.uid, u.uid, u.uid) == 0
            {
                libc::execve(program.as_ptr(), empty.as_ptr(), empty.as_ptr());
            }
            libc::_exit(127)
        },
        nix::unistd::ForkResult::Parent { child } => {
            drop(write_end);
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut File::from(read_end), &mut stderr).unwrap();
            let status = nix::sys::wait::waitpid(child, None).unwrap();
            assert_eq!(
                status,
                nix::sys::wait::WaitStatus::Exited(child, 1),
                "stderr: {stderr}"
            );
            assert!(
                stderr.contains("empty argument list (argc 0)"),
                "stderr: {stderr}"
            );
        }
    }
}

#[test]
fn refuses_an_unknown_verb() {
    let r = exchange(setuid_helper("mount"), Stdio::null()).unwrap();
    assert_refused(&r, "unknown verb \"mount\"");
}

#[test]
fn refuses_extra_arguments() {
    let cmd = as_user(
        &user(),
        &[
            install_setuid().as_os_str(),
            OsStr::new("detach"),
            OsStr::new("--force"),
        ],
    );
    let r = exchange(cmd, Stdio::null()).unwrap();
    assert_refused(&r, "extra arguments refused: [\"--force\"]");
}

#[test]
fn refuses_no_verb() {
    let r = exchange(
        as_user(&user(), &[install_setuid().as_os_str()]),
        Stdio::null(),
    )
    .unwrap();
    assert_refused(&r, "no verb given");
}

fn refuses_environment(name: &str, value: &str) {
    let s = Scratch::new(&format!("helper-env-{}", name.to_lowercase()));
    let img = scratch_image(&s, "disk.img");
    let mut cmd = setuid_helper("attach");
    cmd.env(name, value);
    let r = exchange(cmd, stdin(open_rw(&img))).unwrap();
    assert_refused(
        &r,
        &format!("refusing to run with {name} in the environment"),
    );
    assert_no_loop_device(&img);
}

#[test]
fn refuses_ld_preload() {
    // The loader drops LD_PRELOAD from a setuid program's environment before
    // main; the helper still sees that it was asked for.
    refuses_environment("LD_PRELOAD", "/tmp/evil.so");
}

#[test]
fn refuses_ld_library_path() {
    refuses_environment("LD_LIBRARY_PATH", "/tmp");
}

#[test]
fn refuses_glibc_tunables() {
    refuses_environment("GLIBC_TUNABLES", "glibc.malloc.check=3");
}

#[test]
fn refuses_lc_all() {
    refuses_environment("LC_ALL", "C.UTF-8");
}

#[test]
fn refuses_lang() {
    refuses_environment("LANG", "en_US.UTF-8");
}

#[test]
fn refuses_stdout_that_is_not_a_socket() {
    let s = Scratch::new("helper-stdout");
    let img = scratch_image(&s, "disk.img");
    let out = setuid_helper("attach")
        .stdin(stdin(open_rw(&img)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("standard output is not a socket (a FIFO)"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
    assert_no_loop_device(&img);
}

/// The helper run with descriptor `fd` closed.
fn with_closed(fd: i32) -> Reply {
    let mut cmd = setuid_helper("detach");
    // SAFETY: close(2) only, between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            libc::close(fd);
            Ok(())
        });
    }
    exchange(cmd, Stdio::null()).unwrap()
}

#[test]
fn refuses_a_closed_standard_input() {
    assert_refused(&with_closed(0), "file descriptor 0 was not open");
}

#[test]
fn refuses_a_closed_standard_error() {
    // The reason goes to the reply (and syslog) instead.
    let r = with_closed(2);
    assert_eq!(r.status.code(), Some(1), "{}", show(&r));
    assert!(
        matches!(&r.message, Some(Message::Error(m)) if m.contains("file descriptor 2 was not open")),
        "{}",
        show(&r)
    );
}

#[test]
fn refuses_to_run_without_privilege() {
    // The build's own copy: not setuid, so the test user runs it unprivileged.
    let cmd = as_user(
        &user(),
        &[install_unprivileged().as_os_str(), OsStr::new("attach")],
    );
    let r = exchange(cmd, Stdio::null()).unwrap();
    assert_refused(&r, "kiln-helper is not privileged");
}

/// The helper attaching `image`, found by its standard input.
fn helper_reading(image: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        for p in std::fs::read_dir("/proc").unwrap().flatten() {
            if std::fs::read_link(p.path().join("fd/0")).is_ok_and(|t| t == image)
                && std::fs::read_link(p.path().join("exe")).is_ok_and(|e| e == install_setuid())
            {
                return p.file_name().to_string_lossy().into_owned();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no helper process reads {}",
            image.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn runs_as_root_with_one_capability_that_its_caller_cannot_stop() {
    let s = Scratch::new("helper-locked");
    let img = scratch_image(&s, "disk.img");
    // Holding /dev/loop-control's lock keeps the helper waiting, inspectable.
    let control = File::open("/dev/loop-control").unwrap();
    assert_eq!(
        unsafe { libc::flock(control.as_raw_fd(), libc::LOCK_EX) },
        0
    );
    let input = open_rw(&img);
    let waiting =
        std::thread::spawn(move || exchange(setuid_helper("attach"), stdin(input)).unwrap());
    let pid = helper_reading(&img);
    let field = |name: &str| -> String {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while field("Uid:") != "0 0 0 0" {
        assert!(
            Instant::now() < deadline,
            "the helper's ids: {}",
            field("Uid:")
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        (field("Gid:"), field("Groups:")),
        ("0 0 0 0".to_string(), String::new())
    );
    // CAP_SYS_ADMIN (bit 21) only, nothing to pass on at exec.
    for (set, want) in [
        ("CapEff:", "0000000000200000"),
        ("CapPrm:", "0000000000200000"),
        ("CapInh:", "0000000000000000"),
        ("CapBnd:", "0000000000000000"),
        ("CapAmb:", "0000000000000000"),
        ("NoNewPrivs:", "1"),
    ] {
        assert_eq!(field(set), want, "{set}");
    }
    let stop = as_user(
        &user(),
        &[OsStr::new("kill"), OsStr::new("-STOP"), OsStr::new(&pid)],
    )
    .output()
    .unwrap();
    assert!(
        !stop.status.success() && String::from_utf8_lossy(&stop.stderr).contains("not permitted"),
        "the caller stopped the helper: {stop:?}"
    );
    drop(control);
    let (disk, parts) = devices(waiting.join().unwrap());
    assert!(disk.is_some() && parts.len() == 3);
    drop((disk, parts));
    assert_no_loop_device(&img);
}

// ---- requests about devices ----

#[test]
fn refuses_to_detach_or_rescan_a_device_attached_for_another_uid() {
    let (_s, img, a) = attached_image("helper-otheruid");
    let other: TestUser = other_user();
    for verb in ["detach", "rescan"] {
        let cmd = as_user(&other, &[install_setuid().as_os_str(), OsStr::new(verb)]);
        let r = exchange(cmd, dup(a.disk.as_fd())).unwrap();
        assert_refused(
            &r,
            &format!(
                "{} was attached by kiln-helper for another user, not for you (uid {})",
                a.name, other.uid
            ),
        );
    }
    assert_eq!(
        loop_devices_of(&img),
        vec![a.name.clone()],
        "the refused detach detached"
    );
    drop(a);
    assert_no_loop_device(&img);
}

#[test]
fn refuses_to_detach_a_device_it_never_attached() {
    let s = Scratch::new("helper-foreign");
    let img = scratch_image(&s, "disk.img");
    let out = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "losetup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dev = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let fd = open_rw(Path::new(&dev));
    let r = exchange(setuid_helper("detach"), dup(fd.as_fd())).unwrap();
    let name = dev.trim_start_matches("/dev/");
    let still = loop_devices_of(&img);
    let _ = Command::new("losetup").arg("-d").arg(&dev).status();
    assert_refused(&r, &format!("{name} was not attached by kiln-helper"));
    assert_eq!(still, vec![name.to_string()], "the refused detach detached");
    drop(fd);
    assert_no_loop_device(&img);
}

#[test]
fn refuses_a_partition_or_a_file_where_a_loop_device_is_expected() {
    let (_s, img, a) = attached_image("helper-notloop");
    let r = exchange(setuid_helper("detach"), dup(a.partitions[0].fd.as_fd())).unwrap();
    assert_refused(&r, "not a loop device");
    let r = exchange(setuid_helper("detach"), stdin(open_rw(&img))).unwrap();
    assert_refused(&r, "standard input is a regular file, not a loop device");
    drop(a);
    assert_no_loop_device(&img);
}

#[test]
fn refuses_a_reply_socket_made_by_a_process_that_did_not_run_it() {
    let s = Scratch::new("helper-socketmaker");
    let img = scratch_image(&s, "disk.img");
    // The socket is the test's, but three shells stand between it and the
    // helper: the attachment could not be tied to the process that holds it.
    let script = format!(
        "sh -c 'sh -c \"{} attach; true\"; true'; true",
        install_setuid().display()
    );
    let cmd = as_user(
        &user(),
        &[OsStr::new("sh"), OsStr::new("-c"), OsStr::new(&script)],
    );
    let r = exchange(cmd, stdin(open_rw(&img))).unwrap();
    assert_eq!(
        r.status.code(),
        Some(0),
        "the shell's own status; {}",
        show(&r)
    );
    let Some(Message::Error(reason)) = &r.message else {
        panic!("expected a refusal; {}", show(&r))
    };
    assert!(reason.contains(&format!("the reply socket was made by process {}, which is not the process that ran kiln-helper", std::process::id())), "{}", show(&r));
    assert!(
        r.stderr
            .contains("which is not the process that ran kiln-helper")
            && r.fds.is_empty(),
        "{}",
        show(&r)
    );
    assert_no_loop_device(&img);
}

/// Copies the table regions (first MiB, last 33 sectors) of `from` onto `disk`,
/// as a hook partitioning the device through its descriptor would.
fn write_table_through(disk: BorrowedFd, from: &Path) {
    let src = std::fs::read(from).unwrap();
    let dev = File::from(disk.try_clone_to_owned().unwrap());
    dev.write_all_at(&src[..MIB as usize], 0).unwrap();
    let tail = src.len() - 33 * 512;
    dev.write_all_at(&src[tail..], tail as u64).unwrap();
    dev.sync_all().unwrap();
}

#[test]
fn rescan_adds_the_partitions_a_new_table_has() {
    let s = Scratch::new("helper-rescan");
    let img = image(&s.join("disk.img"), 64, "label: gpt\n,8M\n,16M\n", &user());
    let a = attach(setuid_helper("attach"), &img);
    assert_eq!(a.partitions.len(), 2);
    let bigger = image(
        &s.join("bigger.img"),
        64,
        "label: gpt\n,8M\n,16M\n,20M\n",
        &user(),
    );
    let disk = a.disk;
    drop(a.partitions);
    write_table_through(disk.as_fd(), &bigger);
    let (none, parts) = devices(exchange(setuid_helper("rescan"), dup(disk.as_fd())).unwrap());
    assert!(none.is_none());
    assert_partitions_match(&a.name, &parts, &img);
    assert_eq!(parts[2].size, 20 * MIB);
    assert_writes_land(&parts[2], &img);
    drop(parts);
    drop(disk);
    assert_no_loop_device(&img);
}

#[test]
fn rescan_refuses_to_remove_a_partition_in_use() {
    let (_s, img, mut a) = attached_image("helper-rescan-busy");
    // The table changes behind the device's back, in the backing file:
    // partition 2 shrinks, 3 stays where it was.
    let third = a.partitions[2].start / 512;
    sfdisk(&img, &format!("label: gpt\n,8M\n,12M\nstart={third},\n"));
    let r = exchange(setuid_helper("rescan"), dup(a.disk.as_fd())).unwrap();
    assert_refused(&r, "partition 2 is in use");
    a.partitions.clear();
    let (_, parts) = devices(exchange(setuid_helper("rescan"), dup(a.disk.as_fd())).unwrap());
    assert_partitions_match(&a.name, &parts, &img);
    assert_eq!(parts[1].size, 12 * MIB);
    drop(parts);
    drop(a);
    assert_no_loop_device(&img);
}

// ---- installation ----

#[test]
fn sudoers_file_is_valid_exact_and_installed_0440() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/sudoers.d/kiln");
    let out = Command::new("visudo")
        .arg("-cf")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "visudo -cf: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // sudo skips files in sudoers.d whose names contain a dot.
    assert!(!file.file_name().unwrap().to_string_lossy().contains('.'));
    let text = std::fs::read_to_string(&file).unwrap();
    let rule: String = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        !rule.contains('*') && !rule.contains("ALL:") && !rule.contains(", ALL"),
        "no wildcards: {rule}"
    );
    for verb in ["attach", "rescan", "detach"] {
        assert!(
            rule.contains(&format!("/usr/local/libexec/kiln/kiln-helper {verb}")),
            "{verb}: {rule}"
        );
    }
    install_sudo();
    assert_eq!(
        common::helper::mode(Path::new("/etc/sudoers.d/kiln")),
        0o440
    );
    let check = Command::new("visudo").arg("-c").output().unwrap();
    assert!(
        check.status.success(),
        "visudo -c: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    // The rule allows the fixed verbs only.
    let listed = as_user(
        &user(),
        &[
            OsStr::new("sudo"),
            OsStr::new("-n"),
            OsStr::new("-l"),
            OsStr::new(common::helper::SUDO_PROGRAM),
            OsStr::new("attach"),
        ],
    )
    .stdout(Stdio::null())
    .status()
    .unwrap();
    assert!(listed.success());
    let other = as_user(
        &user(),
        &[
            OsStr::new("sudo"),
            OsStr::new("-n"),
            OsStr::new("-l"),
            OsStr::new(common::helper::SUDO_PROGRAM),
            OsStr::new("mount"),
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .status()
    .unwrap();
    assert!(!other.success(), "sudo allows an unlisted verb");
}

// ---- load ----

#[test]
fn twenty_parallel_attach_detach_cycles() {
    let s = Scratch::new("helper-parallel");
    let images: Vec<PathBuf> = (0..20)
        .map(|i| scratch_image(&s, &format!("disk{i}.img")))
        .collect();
    let expected = expected_partitions(&images[0]);
    // A rival that binds loop devices without the helper's lock, as losetup
    // does: the helper must retry a device taken under it, never fail.
    let rival_file = s.join("rival.img");
    File::create(&rival_file).unwrap().set_len(MIB).unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    let t0 = Instant::now();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let out = Command::new("losetup")
                    .args(["-f", "--show"])
                    .arg(&rival_file)
                    .output()
                    .unwrap();
                if out.status.success() {
                    let _ = Command::new("losetup")
                        .arg("-d")
                        .arg(String::from_utf8_lossy(&out.stdout).trim())
                        .status();
                }
            }
        });
        let cycles: Vec<_> = images
            .iter()
            .map(|img| {
                let expected = &expected;
                scope.spawn(move || {
                    let a = attach(setuid_helper("attach"), img);
                    let got: Vec<(u32, u64, u64)> = a
                        .partitions
                        .iter()
                        .map(|p| (p.number, p.start, p.size))
                        .collect();
                    assert_eq!(&got, expected, "{}", a.name);
                    for p in &a.partitions {
                        assert_eq!(device_size(p.fd.as_fd()), p.size);
                    }
                    let r = exchange(setuid_helper("detach"), dup(a.disk.as_fd())).unwrap();
                    assert!(r.status.success(), "{}", show(&r));
                })
            })
            .collect();
        let failed = cycles
            .into_iter()
            .map(|c| c.join())
            .filter(Result::is_err)
            .count();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(failed, 0, "{failed} of 20 cycles failed");
    });
    eprintln!("20 parallel attach/detach cycles: {:?}", t0.elapsed());
    for img in images.iter().chain([&rival_file]) {
        assert_no_loop_device(img);
    }
}

// ---- leaks: the caller killed at each step ----

/// Run by the leak tests, as the test user, in a process of its own that the
/// test kills: a client that stops at `KILN_HELPER_LEAK_STEP`.
#[test]
#[ignore = "a child process of the leak tests"]
fn leak_client() {
    let Ok(step) = std::env::var("KILN_HELPER_LEAK_STEP") else {
        return;
    };
    let image = open_rw(Path::new(&std::env::var("KILN_HELPER_LEAK_IMAGE").unwrap()));
    let helper = Helper {
        program: std::env::var("KILN_HELPER_LEAK_PROGRAM").unwrap().into(),
        mode: Mode::Setuid,
    };
    let spawn_unread = |verb: &str, input: Stdio| {
        let (ours, theirs) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::SeqPacket,
            None,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let mut cmd = helper.command(verb);
        cmd.stdin(input).stdout(Stdio::from(theirs));
        let child = cmd.spawn().unwrap();
        (ours, child)
    };
    let _keep = match step.as_str() {
        "before-reply" => {
            let kept = spawn_unread("attach", stdin(image));
            println!("READY attaching helper={}", kept.1.id());
            Some(kept)
        }
        "after-fds" => {
            let a = helper.attach(&image).unwrap();
            println!("READY {} with {} partitions", a.name, a.partitions.len());
            std::mem::forget(a);
            None
        }
        "during-detach" => {
            let a = helper.attach(&image).unwrap();
            let kept = spawn_unread("detach", dup(a.disk.as_fd()));
            println!("READY detaching {} helper={}", a.name, kept.1.id());
            std::mem::forget(a);
            Some(kept)
        }
        other => panic!("unknown step {other}"),
    };
    std::io::stdout().flush().unwrap();
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

#[derive(Clone, Copy)]
enum When {
    After(Duration),
    /// Once the helper has registered the device (its last step before replying).
    Replied,
}

fn wait_for_registration(image: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !loop_devices_of(image)
        .iter()
        .any(|d| Path::new("/run/kiln-helper").join(d).exists())
    {
        assert!(
            Instant::now() < deadline,
            "the helper did not attach {} within 10 s",
            image.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(50));
}

/// Starts leak_client as the test user, waits for it to reach `step`, then
/// after `delay` kills it with SIGKILL (with the helper it started, when
/// `with_helper`), and expects no loop device left on the image. Returns the
/// devices the image had at the moment of the kill.
fn kill_caller_at(step: &str, when: When, with_helper: bool) -> Vec<String> {
    let s = Scratch::new(&format!("helper-leak-{step}-{}", with_helper as u8));
    let img = scratch_image(&s, "disk.img");
    let exe = runnable_test_binary();
    let mut cmd = as_user(
        &user(),
        &[
            exe.as_os_str(),
            OsStr::new("--exact"),
            OsStr::new("leak_client"),
            OsStr::new("--ignored"),
            OsStr::new("--nocapture"),
        ],
    );
    cmd.env("KILN_HELPER_LEAK_STEP", step)
        .env("KILN_HELPER_LEAK_IMAGE", &img)
        .env("KILN_HELPER_LEAK_PROGRAM", install_setuid());
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = lines.find(|l| l.as_ref().is_ok_and(|l| l.starts_with("READY")));
    let Some(Ok(ready)) = ready else {
        panic!("the client never reached {step}: {:?}", child.wait())
    };
    let helper = ready
        .split_once("helper=")
        .map(|(_, pid)| pid.trim().to_string());
    match when {
        When::After(delay) => std::thread::sleep(delay),
        When::Replied => wait_for_registration(&img),
    }
    let attached = loop_devices_of(&img);
    if with_helper {
        nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    } else {
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    }
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    // A helper that outlived its caller may attach after this: wait for its end.
    if let Some(pid) = helper {
        let deadline = Instant::now() + Duration::from_secs(10);
        let alive = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|st| !st.contains(") Z "))
        };
        while alive() {
            assert!(
                Instant::now() < deadline,
                "helper {pid} still runs 10 s after its caller died"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    assert_no_loop_device(&img);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for name in &attached {
        assert!(
            !mounts.contains(&format!("/dev/{name} ")),
            "/dev/{name} is mounted"
        );
    }
    assert!(
        !mounts.contains(&s.path.display().to_string()),
        "a mount under {}",
        s.path.display()
    );
    attached
}

#[test]
fn killed_before_reading_the_reply_leaves_no_device() {
    // The caller dies while the helper works; the helper then dies too, or
    // finds nobody to reply to, or its reply dies unread with the socket.
    kill_caller_at("before-reply", When::After(Duration::ZERO), true);
    kill_caller_at("before-reply", When::After(Duration::from_millis(20)), true);
    kill_caller_at("before-reply", When::After(Duration::ZERO), false);
    // The reply, descriptors and all, waits unread in the socket.
    assert_eq!(
        kill_caller_at("before-reply", When::Replied, false).len(),
        1
    );
}

#[test]
fn killed_after_receiving_the_descriptors_leaves_no_device() {
    let attached = kill_caller_at("after-fds", When::After(Duration::ZERO), true);
    assert_eq!(attached.len(), 1);
}

#[test]
fn killed_during_detach_leaves_no_device() {
    assert_eq!(
        kill_caller_at("during-detach", When::After(Duration::ZERO), true).len(),
        1
    );
    // The detach has run; the caller's descriptor kept the device until now.
    assert_eq!(
        kill_caller_at(
            "during-detach",
            When::After(Duration::from_millis(200)),
            false
        )
        .len(),
        1
    );
}

// ---- a caller that clears autoclear ----

/// struct loop_info64 (linux/loop.h).
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

const LO_FLAGS_AUTOCLEAR: u32 = 4;
nix::ioctl_write_ptr_bad!(loop_set_status64, 0x4C04, LoopInfo64);
nix::ioctl_read_bad!(loop_get_status64, 0x4C05, LoopInfo64);

fn loop_status(fd: BorrowedFd) -> LoopInfo64 {
    let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
    unsafe { loop_get_status64(fd.as_raw_fd(), &mut info) }.unwrap();
    info
}

/// Run by `a_caller_that_clears_autoclear_still_loses_the_device`, as the test
/// user: attaches, clears LO_FLAGS_AUTOCLEAR through the disk descriptor it
/// received, shows the device outliving every descriptor of it, and exits when
/// told to.
#[test]
#[ignore = "a child process of the autoclear test"]
fn autoclear_client() {
    let Ok(image) = std::env::var("KILN_HELPER_AUTOCLEAR_IMAGE") else {
        return;
    };
    let mode = if std::env::var("KILN_HELPER_AUTOCLEAR_MODE").as_deref() == Ok("sudo") {
        Mode::Sudo
    } else {
        Mode::Setuid
    };
    let helper = Helper {
        program: std::env::var("KILN_HELPER_AUTOCLEAR_PROGRAM")
            .unwrap()
            .into(),
        mode,
    };
    let a = helper.attach(&open_rw(Path::new(&image))).unwrap();
    let mut info = loop_status(a.disk.as_fd());
    assert_ne!(
        info.lo_flags & LO_FLAGS_AUTOCLEAR,
        0,
        "the helper binds with autoclear"
    );
    info.lo_flags &= !LO_FLAGS_AUTOCLEAR;
    unsafe { loop_set_status64(a.disk.as_raw_fd(), &info) }.unwrap();
    let flags = loop_status(a.disk.as_fd()).lo_flags;
    assert_eq!(flags & LO_FLAGS_AUTOCLEAR, 0, "flags {flags:#x}");
    println!("CLEARED {} flags {flags:#x}", a.name);
    let name = a.name.clone();
    drop(a);
    // Every descriptor is closed: with autoclear the device would be gone now.
    std::thread::sleep(Duration::from_millis(500));
    let backing = Path::new("/sys/block")
        .join(&name)
        .join("loop/backing_file");
    assert!(
        backing.exists(),
        "{name} went with its descriptors although autoclear was cleared"
    );
    println!("OUTLIVED {name}");
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
}

/// /proc/PID/status field `name`, its words joined by single spaces.
fn status_field(pid: &str, name: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The watcher attach left for `device` on behalf of process `caller`: its
/// command name says which device, its pidfd which caller (a watcher of an
/// earlier binding of the same device may still be on its way out).
fn watcher_of(device: &str, caller: u32) -> Option<String> {
    let want = format!("watch {device}");
    std::fs::read_dir("/proc").unwrap().flatten().find_map(|p| {
        let comm = std::fs::read_to_string(p.path().join("comm")).ok()?;
        let fdinfo = std::fs::read_to_string(p.path().join("fdinfo/3")).ok()?;
        let watched = fdinfo
            .lines()
            .find_map(|l| l.strip_prefix("Pid:"))?
            .trim()
            .parse::<u32>()
            .ok()?;
        (comm.trim_end() == want && watched == caller)
            .then(|| p.file_name().to_string_lossy().into_owned())
    })
}

/// The watcher runs as root with nothing of its caller's: no capability, none
/// of its descriptors but the pidfd, its own session; the caller cannot stop it.
fn assert_watcher_hardened(pid: &str, client: u32) {
    for (field, want) in [
        ("Uid:", "0 0 0 0"),
        ("Gid:", "0 0 0 0"),
        ("Groups:", ""),
        ("NoNewPrivs:", "1"),
    ] {
        assert_eq!(status_field(pid, field), want, "watcher {pid}: {field}");
    }
    for set in ["CapEff:", "CapPrm:", "CapInh:", "CapBnd:", "CapAmb:"] {
        assert_eq!(
            status_field(pid, set),
            "0000000000000000",
            "watcher {pid}: {set}"
        );
    }
    let fds = || {
        let mut fds: Vec<(u32, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
            .filter_map(|e| {
                Some((
                    e.file_name().to_string_lossy().parse().unwrap(),
                    std::fs::read_link(e.path())
                        .ok()?
                        .to_string_lossy()
                        .into_owned(),
                ))
            })
            .collect();
        fds.sort();
        fds
    };
    let null = "/dev/null".to_string();
    let want = [
        (0, null.clone()),
        (1, null.clone()),
        (2, null),
        (3, "anon_inode:[pidfd]".to_string()),
    ];
    // Once a second it reads the device's sysfs files: a moment later they are closed again.
    let mut tries = 0;
    while fds() != want && tries < 50 {
        tries += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(fds(), want, "watcher {pid}'s descriptors");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    assert_eq!(fields[3], pid, "the watcher leads its own session");
    let client_sid = std::fs::read_to_string(format!("/proc/{client}/stat")).unwrap();
    assert_ne!(
        client_sid
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .nth(3)
            .unwrap(),
        pid
    );
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
        Path::new("/")
    );
    // The caller ran under `prlimit --cpu=20:30`: from 20 s on SIGXCPU would
    // end the watcher, were it not ignored and the soft limit raised to the hard.
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let cpu = limits
        .lines()
        .find(|l| l.starts_with("Max cpu time"))
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert_eq!(cpu, "Max cpu time 30 30 seconds", "watcher {pid}");
    let ignored = u64::from_str_radix(&status_field(pid, "SigIgn:"), 16).unwrap();
    assert_ne!(
        ignored & 1 << (libc::SIGXCPU - 1),
        0,
        "watcher {pid} does not ignore SIGXCPU"
    );
    for signal in ["-STOP", "-KILL"] {
        let sent = as_user(
            &user(),
            &[OsStr::new("kill"), OsStr::new(signal), OsStr::new(pid)],
        )
        .output()
        .unwrap();
        assert!(
            !sent.status.success()
                && String::from_utf8_lossy(&sent.stderr).contains("not permitted"),
            "the caller signalled its watcher: {sent:?}"
        );
    }
}

/// Clears autoclear as a caller (through `mode`), lets it exit, and expects the
/// device detached within a few seconds. Returns how long that took.
fn caller_clears_autoclear(mode: &str, program: &Path) -> Duration {
    let s = Scratch::new(&format!("helper-autoclear-{mode}"));
    let img = scratch_image(&s, "disk.img");
    let exe = runnable_test_binary();
    let client = [
        OsStr::new("prlimit"),
        OsStr::new("--cpu=20:30"),
        exe.as_os_str(),
        OsStr::new("--exact"),
        OsStr::new("autoclear_client"),
        OsStr::new("--ignored"),
        OsStr::new("--nocapture"),
    ];
    let mut cmd = as_user(&user(), &client);
    cmd.env("KILN_HELPER_AUTOCLEAR_IMAGE", &img)
        .env("KILN_HELPER_AUTOCLEAR_MODE", mode)
        .env("KILN_HELPER_AUTOCLEAR_PROGRAM", program);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok);
    let cleared = lines
        .find(|l| l.starts_with("CLEARED "))
        .unwrap_or_else(|| panic!("the client never cleared autoclear: {:?}", child.wait()));
    let name = cleared.split_whitespace().nth(1).unwrap().to_string();
    let outlived = lines
        .find(|l| l.starts_with("OUTLIVED "))
        .unwrap_or_else(|| panic!("{name}: {:?}", child.wait()));
    assert_eq!(outlived, format!("OUTLIVED {name}"));
    assert_eq!(loop_devices_of(&img), vec![name.clone()]);
    // Other tests may bind the same device as soon as it is free: this binding is known by its disk sequence number.
    let binding = || -> Option<u64> {
        std::fs::metadata(format!("/sys/block/{name}/loop/backing_file")).ok()?;
        std::fs::read_to_string(format!("/sys/block/{name}/diskseq"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let seq = binding().unwrap();
    let registered = || {
        std::fs::read_to_string(format!("/run/kiln-helper/{name}"))
            .is_ok_and(|e| e.contains(&format!("\ndiskseq {seq}\n")))
    };
    assert!(
        registered(),
        "the registry does not list {name} as disk sequence {seq}"
    );
    let watcher = watcher_of(&name, child.id()).unwrap_or_else(|| panic!("no watcher for {name}"));
    assert_watcher_hardened(&watcher, child.id());

    drop(child.stdin.take());
    let status = child.wait().unwrap();
    assert!(status.success(), "the client failed: {status:?}");
    let ended = Instant::now();
    while binding() == Some(seq) {
        assert!(
            ended.elapsed() < Duration::from_secs(5),
            "{name} is still attached to {} 5 s after its caller ended",
            img.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = ended.elapsed();
    assert_no_loop_device(&img);
    while registered() || Path::new("/proc").join(&watcher).exists() {
        assert!(
            ended.elapsed() < Duration::from_secs(5),
            "5 s after its caller ended, the registry lists {name}: {}, watcher {watcher} runs: {}",
            registered(),
            Path::new("/proc").join(&watcher).exists()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    took
}

#[test]
fn a_caller_that_clears_autoclear_still_loses_the_device_when_it_ends() {
    let setuid = caller_clears_autoclear("setuid", &install_setuid());
    // Through sudo the caller is the helper's grandparent: sudo is its parent.
    let sudo = caller_clears_autoclear("sudo", &install_sudo());
    eprintln!("detached after the caller ended: setuid {setuid:?}, sudo {sudo:?}");
}
