//! kiln inside an unprivileged container (issue #14): rootful podman with its
//! default security settings (seccomp profile, capabilities, masked /proc
//! paths), kiln as a non-root user inside. The image is contrib/container's
//! recipe: a Debian root made with mmdebstrap (cached in podman's store by a
//! hash of its inputs), this run's binaries as a thin layer on top.

mod common;

use common::qemu::{Boot, BootOptions, Firmware};
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const TAG: &str = "localhost/kiln-test:latest";
/// The container's non-root user (contrib/container/build-image).
const CONTAINER_UID: u32 = 1000;
/// The only runtime option kiln needs beyond podman's defaults: a /proc whose
/// paths are not covered, so a user namespace may mount its own.
const UNMASK: &str = "unmask=/proc/*";

/// podman with a configuration of this run's: limits no higher than this host's
/// (a host that withholds CAP_SYS_RESOURCE, as this project's machines do,
/// cannot raise them to podman's defaults), and runc, since crun 1.8 refuses
/// hosts with hybrid cgroups. Neither is a security setting.
fn podman() -> Command {
    let mut c = Command::new("podman");
    c.env("CONTAINERS_CONF", containers_conf());
    c
}

fn containers_conf() -> &'static Path {
    static CONF: OnceLock<PathBuf> = OnceLock::new();
    CONF.get_or_init(|| {
        let nofile = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .unwrap()
            .1;
        // podman lowers its own RLIMIT_NPROC to 32768 when it cannot raise it.
        let nproc = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NPROC)
            .unwrap()
            .1
            .min(32768);
        // One name, rewritten by each run: nothing piles up.
        let p = std::env::temp_dir().join("kiln-test-containers.conf");
        std::fs::write(
            &p,
            format!(
                "[containers]\ndefault_ulimits = [\"nofile={nofile}:{nofile}\", \"nproc={nproc}:{nproc}\"]\n\
                 [engine]\nruntime = \"runc\"\n"
            ),
        )
        .unwrap();
        p
    })
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// kiln's image, built once per test run.
fn image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        assert!(
            nix::unistd::getuid().is_root(),
            "tests/container.rs runs rootful podman: run the tests as root (CI does)"
        );
        let old = podman()
            .args(["image", "inspect", "--format", "{{.Id}}", TAG])
            .output()
            .unwrap();
        let bin = Path::new(env!("CARGO_BIN_EXE_disk-image-create"))
            .parent()
            .unwrap();
        let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/container/build-image");
        let started = Instant::now();
        let o = podman()
            .arg("--version")
            .output()
            .expect("podman is missing: run contrib/setup --tests as root");
        assert!(o.status.success(), "{}", text(&o));
        let mut build = Command::new(&recipe);
        build
            .args(["--bin", bin.to_str().unwrap(), "--tag", TAG])
            .env("CONTAINERS_CONF", containers_conf());
        let o = build.output().unwrap();
        assert!(
            o.status.success(),
            "{} failed:\n{}",
            recipe.display(),
            text(&o)
        );
        eprintln!(
            "kiln's container image: {:.1}s\n{}",
            started.elapsed().as_secs_f64(),
            String::from_utf8_lossy(&o.stdout)
        );
        // The previous run's thin layer, now untagged.
        let id = |o: &Output| String::from_utf8_lossy(&o.stdout).trim().to_string();
        let new = podman()
            .args(["image", "inspect", "--format", "{{.Id}}", TAG])
            .output()
            .unwrap();
        assert!(new.status.success(), "{}", text(&new));
        if old.status.success() && id(&old) != id(&new) {
            let _ = podman().args(["rmi", &id(&old)]).output();
        }
    });
    TAG
}

/// A scratch directory with `out` and `tmp` owned by the container's user.
fn dirs(name: &str) -> (Scratch, PathBuf, PathBuf) {
    let s = Scratch::new(name);
    let (out, tmp) = (s.join("out"), s.join("tmp"));
    for d in [&out, &tmp] {
        std::fs::create_dir_all(d).unwrap();
        nix::unistd::chown(
            d,
            Some(nix::unistd::Uid::from_raw(CONTAINER_UID)),
            Some(nix::unistd::Gid::from_raw(CONTAINER_UID)),
        )
        .unwrap();
    }
    (s, out, tmp)
}

/// `disk-image-create -o /out/img debian vm` in a container with podman's
/// defaults plus `extra`, /out and TMPDIR bound from the host.
fn build_in_container(out: &Path, tmp: &Path, extra: &[&str]) -> Output {
    let image = image();
    let started = Instant::now();
    let o = podman()
        .args(["run", "--rm", "--network", "host"])
        .args(extra)
        .arg("-v")
        .arg(format!("{}:/out", out.display()))
        .arg("-v")
        .arg(format!("{}:/build-tmp", tmp.display()))
        .args(["-e", "TMPDIR=/build-tmp", image])
        .args(["disk-image-create", "-o", "/out/img", "debian", "vm"])
        .output()
        .unwrap();
    eprintln!(
        "in-container build ({extra:?}): {:.1}s, {}",
        started.elapsed().as_secs_f64(),
        o.status
    );
    o
}

fn boots_to_login(image: &Path) {
    let mut g = Boot::start(image, &BootOptions::new(Firmware::Bios, "qcow2")).unwrap();
    let t = g
        .wait_for("login:", Duration::from_secs(420))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", g.console()));
    eprintln!("login prompt after {:.1}s", t.as_secs_f64());
}

#[test]
fn builds_in_podman_with_a_subordinate_range_and_boots() {
    let (_s, out, tmp) = dirs("ctr-subuid");
    let o = build_in_container(&out, &tmp, &["--security-opt", UNMASK]);
    let log = text(&o);
    assert!(o.status.success(), "{log}");
    // The image's newuidmap (file capabilities) mapped the range: no fallback.
    assert!(!log.contains("single mapping"), "{log}");
    assert_no_leftovers(&tmp, &out, &["img.qcow2"]);
    boots_to_login(&out.join("img.qcow2"));
}

#[test]
fn builds_in_podman_without_a_subordinate_range_and_boots() {
    let (s, out, tmp) = dirs("ctr-single");
    let empty = s.join("empty-subid");
    std::fs::write(&empty, "").unwrap();
    let bind = format!("{}:/etc/subuid:ro", empty.display());
    let bind_g = format!("{}:/etc/subgid:ro", empty.display());
    let o = build_in_container(
        &out,
        &tmp,
        &["--security-opt", UNMASK, "-v", &bind, "-v", &bind_g],
    );
    let log = text(&o);
    assert!(o.status.success(), "{log}");
    assert!(log.contains("no subordinate id range"), "{log}");
    assert_no_leftovers(&tmp, &out, &["img.qcow2"]);
    boots_to_login(&out.join("img.qcow2"));
}

/// podman's defaults alone: its masked and read-only /proc paths stop a fresh
/// /proc in a user namespace. kiln says so before it starts, naming the option.
#[test]
fn podman_defaults_name_the_proc_option_at_plan_time() {
    let (_s, out, tmp) = dirs("ctr-defaults");
    let o = build_in_container(&out, &tmp, &[]);
    let log = text(&o);
    assert_eq!(o.status.code(), Some(1), "{log}");
    for want in [
        "refuses kiln a fresh /proc",
        "/proc/sys",
        "--security-opt unmask=/proc/*",
        "systempaths=unconfined",
        "procMount: Unmasked",
    ] {
        assert!(log.contains(want), "no {want:?} in:\n{log}");
    }
    // Refused before any hook ran.
    assert!(!log.contains("root.d/"), "{log}");
    assert_no_leftovers_after_failure(&tmp, &out, &[]);
}

/// podman's own profile with unshare and clone refused for CLONE_NEWUSER (as
/// docker's default profile does without CAP_SYS_ADMIN).
fn seccomp_denying_user_namespaces(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string("/usr/share/containers/seccomp.json")
        .expect("podman's default seccomp profile (package golang-github-containers-common)");
    let mut p: serde_json::Value = serde_json::from_str(&text).unwrap();
    let rules = p["syscalls"].as_array_mut().unwrap();
    for r in rules.iter_mut() {
        let names = r["names"].as_array_mut().unwrap();
        names.retain(|n| !matches!(n.as_str(), Some("unshare" | "clone" | "clone3")));
    }
    rules.retain(|r| !r["names"].as_array().unwrap().is_empty());
    const NEWUSER: u64 = libc::CLONE_NEWUSER as u64;
    for name in ["unshare", "clone"] {
        rules.push(serde_json::json!({
            "names": [name], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
            "args": [{"index": 0, "value": NEWUSER, "valueTwo": NEWUSER, "op": "SCMP_CMP_MASKED_EQ"}]
        }));
        rules.push(serde_json::json!({
            "names": [name], "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": NEWUSER, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]
        }));
    }
    // Flags of clone3 live in memory seccomp cannot read: ENOSYS sends libc to clone.
    rules
        .push(serde_json::json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}));
    let path = dir.join("seccomp-no-userns.json");
    std::fs::write(&path, serde_json::to_string_pretty(&p).unwrap()).unwrap();
    path
}

#[test]
fn seccomp_profile_refusing_user_namespaces_is_named_at_plan_time() {
    let (s, out, tmp) = dirs("ctr-seccomp");
    let profile = seccomp_denying_user_namespaces(&s.path);
    let opt = format!("seccomp={}", profile.display());
    let o = build_in_container(
        &out,
        &tmp,
        &["--security-opt", UNMASK, "--security-opt", &opt],
    );
    let log = text(&o);
    assert_eq!(o.status.code(), Some(1), "{log}");
    for want in [
        "seccomp filter",
        "refuses to create a user namespace",
        "--security-opt seccomp=",
    ] {
        assert!(log.contains(want), "no {want:?} in:\n{log}");
    }
    assert!(!log.contains("root.d/"), "{log}");
    assert_no_leftovers_after_failure(&tmp, &out, &[]);
}

/// contrib/kubernetes/kiln-job.yaml under `podman kube play`. Debian 12's
/// podman (4.3) maps hostUsers: false to a user namespace of its own, the
/// capabilities and runAsUser as written, but ignores procMount (honoured from
/// podman 4.7): kiln then names procMount: Unmasked. The same settings with the
/// unmasked /proc procMount stands for, given to podman run, pass kiln's
/// plan-time checks.
#[test]
fn kubernetes_manifest_under_podman() {
    let image = image();
    let (s, _out, _tmp) = dirs("ctr-kube");
    let manifest = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/kubernetes/kiln-job.yaml"),
    )
    .unwrap();
    assert!(manifest.contains("image: kiln:latest"), "{manifest}");
    for want in [
        "hostUsers: false",
        "runAsNonRoot: true",
        "privileged: false",
        "procMount: Unmasked",
        "drop: [\"ALL\"]",
    ] {
        assert!(manifest.contains(want), "the manifest lost {want:?}");
    }
    let yaml = s.join("kiln-job.yaml");
    std::fs::write(
        &yaml,
        manifest.replace("image: kiln:latest", &format!("image: {image}")),
    )
    .unwrap();
    let _ = podman()
        .args(["kube", "down", yaml.to_str().unwrap()])
        .output();
    let o = podman()
        .args(["kube", "play", yaml.to_str().unwrap()])
        .output()
        .unwrap();
    let ctr = "kiln-build-kiln";
    let waited = podman().args(["wait", ctr]).output().unwrap();
    let logs = podman().args(["logs", ctr]).output().unwrap();
    let inspect = podman()
        .args([
            "inspect",
            "--format",
            "{{.Config.User}}|{{.HostConfig.Privileged}}|{{.HostConfig.SecurityOpt}}|{{.HostConfig.IDMappings.UIDMap}}|{{.EffectiveCaps}}",
            ctr,
        ])
        .output()
        .unwrap();
    let _ = podman()
        .args(["kube", "down", yaml.to_str().unwrap()])
        .output();
    let (played, log, seen) = (text(&o), text(&logs), text(&inspect));
    eprintln!("kube play: {played}\ninspect: {seen}\nlogs: {log}");
    let f: Vec<&str> = seen.trim().split('|').collect();
    assert_eq!(f[0], "1000:1000", "runAsUser/runAsGroup: {seen}");
    assert_eq!(f[1], "false", "never privileged: {seen}");
    assert!(
        f[3].starts_with("[0:"),
        "hostUsers: false gives a user namespace: {seen}"
    );
    assert!(!f[4].contains("SYS_ADMIN"), "{seen}");
    assert!(
        !f[2].contains("unmask"),
        "this podman honours procMount now: make this test expect the build to pass ({seen})"
    );
    assert_eq!(String::from_utf8_lossy(&waited.stdout).trim(), "1", "{log}");
    assert!(log.contains("procMount: Unmasked"), "{log}");

    // The manifest's settings with /proc unmasked: kiln's plan-time checks pass.
    let o = podman()
        .args(["run", "--rm", "--network", "none", "--user", "1000:1000"])
        .args(["--cap-drop", "ALL", "--cap-add", "SETUID,SETGID"])
        .args([
            "--security-opt",
            "unmask=ALL",
            "--userns",
            "auto:size=200000",
            image,
        ])
        .args([
            "disk-image-create",
            "--dry-run",
            "-o",
            "/tmp/img",
            "debian",
            "vm",
        ])
        .output()
        .unwrap();
    let log = text(&o);
    assert!(o.status.success(), "{log}");
    assert!(log.contains("flavours: "), "{log}");
    assert!(!log.contains("cannot start"), "{log}");
    assert!(!log.contains("single mapping"), "{log}");
}

/// A setuid-root newuidmap (Debian 12's own, as in images that keep it) cannot
/// map the range under podman's default capabilities: kiln says so at plan
/// time, with the fix, and goes on with a single mapping.
#[test]
fn setuid_newuidmap_falls_back_to_a_single_mapping_with_the_fix() {
    let image = image();
    let o = podman()
        .args(["run", "--rm", "--network", "host", "--user", "0"])
        .args(["--security-opt", UNMASK, image, "sh", "-c"])
        .arg(
            "setcap -r /usr/bin/newuidmap && setcap -r /usr/bin/newgidmap && \
             chmod u+s /usr/bin/newuidmap /usr/bin/newgidmap && \
             exec setpriv --reuid=1000 --regid=1000 --init-groups env HOME=/home/kiln USER=kiln \
             disk-image-create --dry-run -o /tmp/img debian vm",
        )
        .output()
        .unwrap();
    let log = text(&o);
    assert!(o.status.success(), "{log}");
    for want in [
        "warning: your subordinate range cannot be mapped here",
        "single mapping",
        "write to uid_map failed",
        "setcap cap_setuid=ep /usr/bin/newuidmap",
    ] {
        assert!(log.contains(want), "no {want:?} in:\n{log}");
    }
    assert!(!log.contains("cannot start"), "{log}");
}
