//! The image's content is untrusted (docs/architecture.md §10.6): hooks plant symlinks and hard
//! links to host files at every path kiln's own host-side code touches after hooks
//! ran. The host's canaries must come out unchanged, their content in no output,
//! and the build either treats the link as inside the image or fails naming it.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Content of the host canary file: found in an output, it leaked.
fn marker() -> String {
    format!("KILN-HOST-CANARY-{}", std::process::id())
}

struct Canaries {
    file: PathBuf,
    dir: PathBuf,
}

/// A canary file and directory on the host, owned by the test user, as the user's
/// own files (the ones a planted link would reach) are.
fn canaries(s: &Scratch) -> Canaries {
    let dir = s.join("host-dir");
    std::fs::create_dir_all(dir.join("in_target.d")).unwrap();
    std::fs::write(dir.join("machine-id"), "host machine-id\n").unwrap();
    let file = s.join("host-canary");
    std::fs::write(&file, format!("{}\n", marker())).unwrap();
    for p in [
        &dir,
        &dir.join("in_target.d"),
        &dir.join("machine-id"),
        &file,
    ] {
        chown_to_user(p);
    }
    Canaries { file, dir }
}

fn assert_canaries_intact(c: &Canaries) {
    assert_eq!(
        std::fs::read_to_string(&c.file).unwrap(),
        format!("{}\n", marker()),
        "the host canary file was changed"
    );
    let mut names: Vec<String> = std::fs::read_dir(&c.dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["in_target.d", "machine-id"],
        "the host canary directory was changed"
    );
    assert_eq!(
        std::fs::read_to_string(c.dir.join("machine-id")).unwrap(),
        "host machine-id\n"
    );
    assert!(c.dir.join("in_target.d").is_dir());
}

/// Whether the canary's content is anywhere in `file` (sparse disk images included).
fn contains_marker(file: &Path) -> bool {
    let st = Command::new("grep")
        .args(["-q", "-a", "-F", &marker()])
        .arg(file)
        .status()
        .unwrap();
    st.success()
}

const HOSTILE_PREAMBLE: &str = "#!/bin/bash\nset -eux\nC=$DIB_CANARY; D=$DIB_CANARY_DIR\n";

fn hook(body: &str) -> String {
    format!("{HOSTILE_PREAMBLE}{body}")
}

fn build(
    s: &Scratch,
    c: &Canaries,
    args: &[&str],
    bin: &str,
    flavours: &Path,
) -> std::process::Output {
    let tmp = s.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    chown_to_user(&tmp);
    kiln(bin, args)
        .env("ELEMENTS_PATH", test_flavours_path(&[flavours]))
        .env("TMPDIR", &tmp)
        .env("DIB_CANARY", &c.file)
        .env("DIB_CANARY_DIR", &c.dir)
        .output()
        .expect("running kiln")
}

/// Every path kiln writes, removes or copies out of a `vm` image after the hooks,
/// planted at once: the links resolve inside the image (the hook made the same
/// paths there), so the build succeeds with each link taken as the image's own.
#[test]
fn planted_symlinks_in_a_vm_image_never_reach_the_host() {
    let s = Scratch::new("untrusted-vm");
    let c = canaries(&s);
    let flavours = s.flavour(
        "hostile-links",
        &[
            (
                "README.md",
                "Plants links to host files where kiln works after the hooks.\n",
                false,
            ),
            ("element-deps", "vm\n", false),
            // The image's own twins of the host paths: a link taken inside the image lands here.
            (
                "install.d/90-hostile-twins",
                &hook("mkdir -p \"$D/in_target.d\"\necho image-twin > \"$C\"\n"),
                true,
            ),
            // kiln copies first-boot.d hooks into /usr/lib/kiln/first-boot.d after post-root.d.
            (
                "post-install.d/90-hostile",
                &hook(
                    "rm -rf /usr/lib/kiln/first-boot.d\nln -s \"$D\" /usr/lib/kiln/first-boot.d\n",
                ),
                true,
            ),
            (
                "first-boot.d/50-x",
                "#!/bin/sh\necho KILN-FIRST-BOOT-PAYLOAD\n",
                true,
            ),
            (
                "finalise.d/99-hostile",
                &hook(
                    "ln -sf \"$C\" /etc/machine-id
rm -rf /var/lib/dbus && ln -s \"$D\" /var/lib/dbus
ln -sf \"$C\" /usr/sbin/policy-rc.d
mkdir -p /boot/efi
ln -s \"$C\" /boot/efi/stolen
ln -s \"$D\" /boot/efi/stolen-dir
for g in /usr/lib/grub/i386-pc /usr/lib/grub/x86_64-efi; do ln -s \"$C\" $g/zz-stolen.mod; done
# Last: the bind of /tmp/in_target.d stays on the old /tmp.
mv /tmp /tmp.hostile && ln -s \"$D\" /tmp
",
                ),
                true,
            ),
        ],
    );
    let out = s.join("img");
    let mut args = vec!["-t", "raw,tar", "-o", out.to_str().unwrap()];
    args.extend(IMAGE_FLAVOURS);
    args.push("hostile-links");
    let o = build(&s, &c, &args, "disk-image-create", &flavours);
    assert!(o.status.success(), "the build failed:\n{}", output_text(&o));
    assert_canaries_intact(&c);
    let (raw, tar) = (s.join("img.raw"), s.join("img.tar"));
    assert!(
        !contains_marker(&tar),
        "the host canary's content is in the tarball"
    );
    assert!(
        !contains_marker(&raw),
        "the host canary's content is in the disk image"
    );

    // Inside the image: the links were taken as the image's own paths.
    let x = tempfile::tempdir().unwrap();
    let twin = c.dir.strip_prefix("/").unwrap();
    let st = Command::new("tar")
        .arg("-xf")
        .arg(&tar)
        .arg("-C")
        .arg(x.path())
        .args(["./etc/machine-id", "./usr/lib/kiln"])
        .arg(format!("./{}", twin.display()))
        .status()
        .unwrap();
    assert!(st.success());
    let mid = std::fs::symlink_metadata(x.path().join("etc/machine-id")).unwrap();
    assert!(
        mid.is_file() && mid.len() == 0,
        "etc/machine-id must be an empty regular file in the image"
    );
    let payload = std::fs::read_to_string(x.path().join(twin).join("50-x"))
        .expect("the first-boot hook went where the image's link points");
    assert!(payload.contains("KILN-FIRST-BOOT-PAYLOAD"));

    // The ESP holds the image's twin, not the host file.
    let esp = esp_offset(&raw);
    let stolen = Command::new("mtype")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(format!("{}@@{esp}", raw.display()))
        .arg("::/stolen")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&stolen.stdout).trim(),
        "image-twin",
        "{}",
        String::from_utf8_lossy(&stolen.stderr)
    );
    assert_no_leftovers(
        &s.join("tmp"),
        &s.path,
        &["host-canary", "host-dir", "img.raw", "img.tar"],
    );
}

/// Byte offset of the EFI system partition in a raw GPT disk.
fn esp_offset(raw: &Path) -> u64 {
    let o = Command::new("sfdisk")
        .arg("--json")
        .arg(raw)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let parts = v["partitiontable"]["partitions"].as_array().unwrap();
    let esp = parts
        .iter()
        .find(|p| {
            p["type"]
                .as_str()
                .unwrap()
                .eq_ignore_ascii_case("C12A7328-F81F-11D2-BA4B-00A0C93EC93B")
        })
        .expect("an ESP");
    esp["start"].as_u64().unwrap() * 512
}

/// While a hook runs, the build directory (which may hold a setuid file a hook
/// made, in an on-disk tree) is the user's alone: no other user can reach into it.
#[test]
fn the_build_directory_is_private_while_hooks_run() {
    use std::io::{BufRead, BufReader};
    let s = Scratch::new("untrusted-private");
    let c = canaries(&s);
    let flavours = s.flavour(
        "setuid-in-tree",
        &[
            ("README.md", "Leaves a setuid shell in the tree and waits.\n", false),
            ("install.d/90-setuid", &hook("cp /bin/sh /usr/local/bin/kiln-suid && chmod 4755 /usr/local/bin/kiln-suid\necho KILN-CHECK-BUILD-DIR\nsleep 3\n"), true),
        ],
    );
    let tmp = s.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    chown_to_user(&tmp);
    let out = s.join("img");
    let mut args = vec!["--no-tmpfs", "-t", "tar", "-o", out.to_str().unwrap()];
    args.extend(IMAGE_FLAVOURS);
    args.push("setuid-in-tree");
    let mut child = kiln("disk-image-create", &args)
        .env("ELEMENTS_PATH", test_flavours_path(&[&flavours]))
        .env("TMPDIR", &tmp)
        .env("DIB_CANARY", &c.file)
        .env("DIB_CANARY_DIR", &c.dir)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut checked = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok)
    {
        if line.contains("KILN-CHECK-BUILD-DIR") && !line.contains("echo") {
            for e in std::fs::read_dir(&tmp).unwrap().flatten() {
                let mode =
                    std::os::unix::fs::PermissionsExt::mode(&e.metadata().unwrap().permissions())
                        & 0o7777;
                checked.push((e.file_name().to_string_lossy().into_owned(), mode));
            }
        }
    }
    assert!(child.wait().unwrap().success());
    assert!(!checked.is_empty(), "the hook's marker was never seen");
    for (name, mode) in &checked {
        assert_eq!(
            *mode, 0o700,
            "build directory {name} has mode {mode:o}: other users could reach a setuid file in it"
        );
    }
    assert_no_leftovers(&tmp, &s.path, &["host-canary", "host-dir", "img.tar"]);
}

/// What a hook inside the image sees of the host: no key descriptions, no host
/// paths in its environment.
#[test]
fn hooks_see_no_host_keys_and_no_host_paths_in_their_environment() {
    let s = Scratch::new("untrusted-view");
    let flavours = s.flavour(
        "host-view",
        &[
            ("README.md", "Records what a hook sees of the host.\n", false),
            (
                "install.d/90-host-view",
                "#!/bin/bash\nset -eu\n{ stat -c '%F' /proc/keys /proc/key-users /proc/timer_list; wc -c < /proc/keys; env; } > /root/kiln-host-view\n",
                true,
            ),
        ],
    );
    let tmp = s.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    chown_to_user(&tmp);
    let out = s.join("img");
    let mut args = vec!["-t", "tar", "-o", out.to_str().unwrap()];
    args.extend(IMAGE_FLAVOURS);
    args.push("host-view");
    run_ok(
        kiln("disk-image-create", &args)
            .env("ELEMENTS_PATH", test_flavours_path(&[&flavours]))
            .env("TMPDIR", &tmp),
    );
    let x = tempfile::tempdir().unwrap();
    assert!(Command::new("tar")
        .arg("-xf")
        .arg(s.join("img.tar"))
        .arg("-C")
        .arg(x.path())
        .arg("./root/kiln-host-view")
        .status()
        .unwrap()
        .success());
    let view = std::fs::read_to_string(x.path().join("root/kiln-host-view")).unwrap();
    let lines: Vec<&str> = view.lines().collect();
    assert_eq!(
        &lines[..4],
        [
            "character special file",
            "character special file",
            "character special file",
            "0"
        ],
        "{view}"
    );
    for var in [
        "TMP_BUILD_DIR=",
        "TMP_IMAGE_DIR=",
        "KILN_USER_HOME=",
        "KILN_APT_CACHE=",
    ] {
        assert!(
            !view.lines().any(|l| l.starts_with(var)),
            "{var} reached a hook inside the image:\n{view}"
        );
    }
    let home = env()
        .user
        .as_ref()
        .map(|u| u.home.display().to_string())
        .unwrap_or_else(|| std::env::var("HOME").unwrap());
    assert!(
        !view.contains(&home),
        "the user's home directory reached a hook's environment:\n{view}"
    );
}

/// A host-side hook tries to hard-link a host file into an on-disk tree. In kiln's
/// namespace the build directory is a mount of its own, so the link fails (EXDEV);
/// had it been made, kiln replaces the files it rewrites rather than writing
/// through them (the unit tests of src/tree cover that).
#[test]
fn a_host_file_cannot_be_hard_linked_into_the_tree() {
    let s = Scratch::new("untrusted-hardlink");
    let c = canaries(&s);
    let flavours = s.flavour(
        "hostile-hardlink",
        &[
            ("README.md", "Hard-links a host file into the tree.\n", false),
            (
                "cleanup.d/90-hostile",
                &hook("if ln -f \"$C\" \"$TARGET_ROOT/etc/machine-id\"; then echo KILN-HARDLINK-MADE; else echo KILN-HARDLINK-REFUSED; fi\n"),
                true,
            ),
        ],
    );
    let out = s.join("img");
    let mut args = vec!["--no-tmpfs", "-t", "tar", "-o", out.to_str().unwrap()];
    args.extend(IMAGE_FLAVOURS);
    args.push("hostile-hardlink");
    let o = build(&s, &c, &args, "disk-image-create", &flavours);
    assert!(o.status.success(), "the build failed:\n{}", output_text(&o));
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(
        log.contains("Invalid cross-device link") && log.contains("KILN-HARDLINK-REFUSED"),
        "{log}"
    );
    assert_canaries_intact(&c);
    assert!(!contains_marker(&s.join("img.tar")));
    assert_no_leftovers(
        &s.join("tmp"),
        &s.path,
        &["host-canary", "host-dir", "img.tar"],
    );
}

const RAMDISK_FLAVOURS: [&str; 5] = ["debian", "inventory", "burnin", "deploy", "ramdisk-marker"];

fn ramdisk_with(
    s: &Scratch,
    c: &Canaries,
    name: &str,
    phase_hook: (&str, &str),
) -> std::process::Output {
    let flavours = s.flavour(
        name,
        &[
            ("README.md", "Replaces the kernel kiln copies out.\n", false),
            (phase_hook.0, &hook(phase_hook.1), true),
        ],
    );
    let out = s.join("r");
    let mut args = vec!["-o", out.to_str().unwrap()];
    args.extend(RAMDISK_FLAVOURS);
    args.push(name);
    build(s, c, &args, "ramdisk-image-create", &flavours)
}

#[test]
fn a_ramdisk_kernel_planted_as_a_symlink_is_refused_naming_it() {
    let s = Scratch::new("untrusted-ramdisk");
    let c = canaries(&s);
    let o = ramdisk_with(
        &s,
        &c,
        "hostile-kernel-link",
        (
            "finalise.d/99-hostile",
            "for k in /boot/vmlinuz-*; do ln -sf \"$C\" \"$k\"; done\n",
        ),
    );
    assert!(
        !o.status.success(),
        "a kernel linked to a host file was copied out:\n{}",
        output_text(&o)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("/boot/vmlinuz-") && err.contains("symbolic link"),
        "the error must name the kernel's path:\n{err}"
    );
    assert_canaries_intact(&c);
    assert_no_leftovers(&s.join("tmp"), &s.path, &["host-canary", "host-dir"]);
}
