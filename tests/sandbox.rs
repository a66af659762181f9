//! Foundation: a Debian root built rootless, and what a hook can and cannot do.
//! One build (tar output, with the probe flavour) serves every test here.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

struct ProbeBuild {
    _scratch: Scratch,
    tar: PathBuf,
    /// Files of /root/kiln-probe, by name.
    probe: BTreeMap<String, String>,
    stderr: String,
    host_file: PathBuf,
}

fn probe_build() -> &'static ProbeBuild {
    static B: OnceLock<ProbeBuild> = OnceLock::new();
    B.get_or_init(|| {
        let s = Scratch::new("probe");
        let host_file = s.join("host-secret");
        std::fs::write(&host_file, "secret\n").unwrap();
        let out = s.join("img");
        let tmp = s.join("tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        chown_to_user(&tmp);
        let mut args = vec!["-t", "tar", "-o", out.to_str().unwrap()];
        args.extend(IMAGE_FLAVOURS);
        args.push("probe");
        let o = run_ok(
            kiln("disk-image-create", &args)
                .env("ELEMENTS_PATH", test_flavours_path(&[]))
                .env("TMPDIR", &tmp)
                .env("DIB_PROBE_HOST_FILE", &host_file),
        );
        let tar = s.join("img.tar");
        let probe = read_probe(&tar);
        assert_no_leftovers(&tmp, &s.path, &["host-secret", "img.tar"]);
        ProbeBuild {
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            _scratch: s,
            tar,
            probe,
            host_file,
        }
    })
}

fn read_probe(tar: &std::path::Path) -> BTreeMap<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let st = Command::new("tar")
        .arg("-xf")
        .arg(tar)
        .arg("-C")
        .arg(dir.path())
        .arg("./root/kiln-probe")
        .status()
        .unwrap();
    assert!(st.success(), "the tarball has no /root/kiln-probe");
    let mut m = BTreeMap::new();
    for e in std::fs::read_dir(dir.path().join("root/kiln-probe"))
        .unwrap()
        .flatten()
    {
        m.insert(
            e.file_name().to_string_lossy().into_owned(),
            std::fs::read_to_string(e.path()).unwrap(),
        );
    }
    m
}

fn escape(name: &str) -> String {
    let text = &probe_build().probe["escapes"];
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("probe did not record {name}:\n{text}"))
        .to_string()
}

const EPERM: &str = "1";

#[test]
fn tarball_has_the_images_ownership() {
    let b = probe_build();
    let out = Command::new("tar")
        .args(["--numeric-owner", "-tvf"])
        .arg(&b.tar)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    let shadow = listing
        .lines()
        .find(|l| l.ends_with(" ./etc/shadow"))
        .expect("etc/shadow in the tarball");
    assert!(
        shadow.starts_with("-rw-r----- 0/42 "),
        "etc/shadow: {shadow}"
    );
    // Packages chown some files to system users (`_apt`, `systemd-*`): with a
    // single mapping, or owners lost on the way out, every owner would be root,
    // or nobody (65534) for an unmapped id.
    let system_owned = listing.lines().find(|l| {
        let owner = l.split_whitespace().nth(1).unwrap_or("");
        let uid: u32 = owner.split('/').next().unwrap().parse().unwrap();
        (1..65534).contains(&uid)
    });
    assert!(
        system_owned.is_some(),
        "no entry owned by a system user: the subordinate range did not reach the tarball"
    );
}

/// `inside outside count` lines of a uid_map/gid_map.
fn id_map(text: &str) -> Vec<[u64; 3]> {
    text.lines()
        .map(|l| {
            let f: Vec<u64> = l.split_whitespace().map(|n| n.parse().unwrap()).collect();
            [f[0], f[1], f[2]]
        })
        .collect()
}

/// `start` and `count` of the first range of `user` (by name or uid) in
/// /etc/subuid or /etc/subgid, as kiln reads it.
fn subordinate_range(file: &str, user: &str, uid: u32) -> [u64; 2] {
    let text = std::fs::read_to_string(file).unwrap();
    text.lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() == 3 && (f[0] == user || f[0] == uid.to_string()))
                .then(|| [f[1].parse().unwrap(), f[2].parse().unwrap()])
        })
        .unwrap_or_else(|| panic!("no range for {user} in {file}"))
}

#[test]
fn hook_ids_map_onto_root_and_the_subordinate_range() {
    let p = &probe_build().probe;
    let (name, uid, gid) = match &env().user {
        Some(u) => (u.name.clone(), u.uid, u.gid),
        None => (
            std::env::var("USER").unwrap(),
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        ),
    };
    for (map, caller, file) in [
        ("uid_map", uid, "/etc/subuid"),
        ("gid_map", gid, "/etc/subgid"),
    ] {
        let [start, count] = subordinate_range(file, &name, uid);
        assert_eq!(
            id_map(&p[map]),
            vec![[0, caller as u64, 1], [1, start, count.min(65535)]],
            "{map} is not root plus {file}'s range:\n{}",
            p[map]
        );
    }
}

#[test]
fn hook_runs_as_root_of_its_own_namespace() {
    let p = &probe_build().probe;
    assert_eq!(p["uid"].trim(), "0");
    // Its own PID namespace: only a handful of the hook's own processes, PID 1 among them.
    let pids: Vec<u32> = p["pids"].lines().map(|l| l.parse().unwrap()).collect();
    assert!(
        pids.contains(&1) && pids.len() < 10,
        "pids seen by the hook: {pids:?}"
    );
    assert_eq!(p["hostname"].trim(), "kiln");
}

#[test]
fn hook_sees_only_the_listed_device_nodes() {
    let dev: Vec<String> = probe_build().probe["dev"]
        .lines()
        .map(str::to_string)
        .collect();
    let want = [
        "fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout", "tty",
        "urandom", "zero",
    ];
    assert_eq!(dev, want);
}

#[test]
fn hook_has_seccomp_and_no_new_privs_and_no_sys_admin() {
    let status = &probe_build().probe["status"];
    assert!(status.contains("Seccomp:\t2"), "{status}");
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:\t"))
        .unwrap();
    let bits = u64::from_str_radix(cap_eff.trim(), 16).unwrap();
    assert_eq!(bits & (1 << 21), 0, "CAP_SYS_ADMIN kept: {cap_eff}");
}

#[test]
fn hook_sees_no_host_path() {
    let b = probe_build();
    let mi = &b.probe["mountinfo"];
    // Mount points (field 5) are all inside the image's own namespace of paths.
    for line in mi.lines() {
        let mp = line.split(' ').nth(4).unwrap();
        assert!(
            !mp.starts_with("/var/tmp") && !mp.starts_with("/home"),
            "host path mounted in the hook's view: {line}"
        );
    }
    assert_eq!(
        b.probe["host_file_name"].trim(),
        b.host_file.display().to_string()
    );
}

#[test]
fn hook_cannot_read_host_files() {
    assert_eq!(escape("read_host_file"), "denied");
    assert_eq!(escape("proc_root_host_file"), "denied");
}

#[test]
fn hook_cannot_write_sysrq_trigger() {
    assert_eq!(escape("sysrq"), "denied");
}

#[test]
fn hook_cannot_use_keyrings() {
    assert_eq!(escape("keyctl"), EPERM);
    assert_eq!(escape("add_key"), EPERM);
}

#[test]
fn hook_cannot_load_kernel_modules() {
    assert_eq!(escape("init_module"), EPERM);
    assert_eq!(escape("finit_module"), EPERM);
}

#[test]
fn hook_cannot_kexec_or_reboot() {
    assert_eq!(escape("kexec_load"), EPERM);
    assert_eq!(escape("reboot"), EPERM);
}

#[test]
fn hook_cannot_mount_a_host_block_device() {
    assert_eq!(escape("host_block_node"), "absent");
    assert_eq!(escape("mount_host_disk"), EPERM);
}

#[test]
fn hook_cannot_inject_terminal_input() {
    assert_eq!(escape("tiocsti"), EPERM);
    assert_eq!(
        escape("tiocsti_high"),
        EPERM,
        "high bits of the ioctl command must not bypass the filter"
    );
    assert_eq!(escape("controlling_tty"), "denied");
}

#[test]
fn hook_cannot_ptrace() {
    assert_eq!(escape("ptrace_attach"), EPERM);
}

#[test]
fn build_reports_progress_and_timings() {
    let e = &probe_build().stderr;
    assert!(
        e.contains("install.d/50-probe-facts  (flavour probe)"),
        "{e}"
    );
    assert!(e.contains("timings:") && e.contains("total"), "{e}");
}

#[test]
fn static_files_of_flavours_are_installed() {
    let b = probe_build();
    let o = Command::new("tar")
        .arg("-xOf")
        .arg(&b.tar)
        .arg("./etc/kiln-static-test")
        .output()
        .unwrap();
    assert!(o.status.success(), "no /etc/kiln-static-test in the image");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "from the probe flavour's static/\n"
    );
}
