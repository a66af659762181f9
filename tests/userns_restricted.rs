//! A kernel (or container) that forbids user namespaces: kiln says which
//! setting blocks it and how to fix it, before starting anything. The limit is
//! set inside a user namespace of the test's own (`user.max_user_namespaces`
//! is per user namespace), so the machine's setting is never touched.

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn zero_user_namespaces_is_named_with_its_fix_before_the_build() {
    let e = env();
    let user = e.user.as_ref().expect(
        "this test runs as root (as CI does): it maps the test user into a namespace of its own",
    );
    let s = Scratch::new("userns-limit");
    let go = s.join("mapped");
    let kiln = e.stage.join("bin/disk-image-create");
    let script = format!(
        // The shell was exec'd before its ids were mapped, so it holds no
        // capabilities: a second exec, as the now-mapped root, gets them.
        "while [ ! -e {go} ]; do sleep 0.05; done; exec sh -c '\
         echo 0 > /proc/sys/user/max_user_namespaces || exit 90; \
         exec setpriv --reuid={uid} --regid={gid} --clear-groups env -i \
           PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME={home} KILN_BUILTIN_FLAVOURS={flavours} \
           {kiln} -t tar -o {out} debian'",
        go = go.display(),
        uid = user.uid,
        gid = user.gid,
        home = user.home.display(),
        flavours = e.stage.join("flavours").display(),
        kiln = kiln.display(),
        out = s.join("img").display(),
    );
    let child = Command::new("unshare")
        .args(["--user", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // unshare(1) execs sh in the same process once the namespace exists.
    let ours = std::fs::read_link("/proc/self/ns/user").unwrap();
    let start = Instant::now();
    while std::fs::read_link(format!("/proc/{pid}/ns/user")).is_ok_and(|n| n == ours) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "unshare never made its namespace"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Host ids 0-65535 as themselves: the test user stays who it is inside.
    std::fs::write(format!("/proc/{pid}/uid_map"), "0 0 65536\n").unwrap();
    std::fs::write(format!("/proc/{pid}/gid_map"), "0 0 65536\n").unwrap();
    std::fs::write(&go, "").unwrap();
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(90), "could not set the limit:\n{err}");
    assert!(!o.status.success(), "the build started anyway:\n{err}");
    assert!(
        err.contains("user.max_user_namespaces is 0")
            && err.contains("sysctl -w user.max_user_namespaces="),
        "the error does not name the setting and its fix:\n{err}"
    );
    // Refused before any hook ran: no progress lines, no outputs.
    assert!(!err.contains("root.d/"), "{err}");
    assert!(!s.join("img.tar").exists());
}
