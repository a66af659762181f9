//! diskimage-builder's own elements, as its Python package ships them (pip,
//! version pinned by `contrib/setup --tests`, `KILN_TEST_DIB_VERSION`
//! overrides), built by kiln as the unprivileged test user: the drop-in promise.

mod common;

use common::qemu::{Boot, BootOptions, Firmware};
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const BOOT_TIMEOUT: Duration = Duration::from_secs(600);
const DEV_PASSWORD: &str = "kiln-dib-test";

/// `…/site-packages/diskimage_builder/elements` of the venv `contrib/setup --tests` made.
fn dib_elements() -> PathBuf {
    let version = std::env::var("KILN_TEST_DIB_VERSION").unwrap_or_else(|_| "3.43.0".into());
    let venv = PathBuf::from(format!("/var/lib/kiln-tests/dib-{version}"));
    std::fs::read_dir(venv.join("lib"))
        .ok()
        .and_then(|rd| {
            rd.flatten()
                .map(|e| e.path().join("site-packages/diskimage_builder/elements"))
                .find(|p| p.is_dir())
        })
        .unwrap_or_else(|| {
            panic!(
                "diskimage-builder {version} is not installed in {}: run `contrib/setup --tests` as root",
                venv.display()
            )
        })
}

/// `disk-image-create` as a diskimage-builder user runs it: its elements on
/// ELEMENTS_PATH, working in `dir`.
fn dib(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = kiln("disk-image-create", args);
    cmd.env("ELEMENTS_PATH", dib_elements())
        .env("DIB_RELEASE", "bookworm")
        .current_dir(dir);
    cmd
}

/// The Debian mirror kiln takes from the host's apt sources (what a nodepool
/// operator would write into DIB_DISTRIBUTION_MIRROR).
fn host_mirror() -> String {
    let o = run_ok(&mut kiln(
        "disk-image-create",
        &["--dry-run", "-o", "x", "debian"],
    ));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("distribution: ")?.split(" from ").nth(1))
        .unwrap_or_else(|| panic!("no mirror in the dry run:\n{text}"))
        .trim()
        .to_string()
}

fn boot_to_login(image: &Path, firmware: Firmware) -> Boot {
    let mut g = Boot::start(image, &BootOptions::new(firmware, "qcow2")).unwrap();
    let t = g
        .wait_for("login:", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!(
        "{} ({firmware:?}): login prompt after {:.1}s",
        image.display(),
        t.as_secs_f64()
    );
    g
}

/// Whether a `tar -tv` line is about `path` (a file, a directory `path/`, a link).
fn names(line: &str, path: &str) -> bool {
    let l = line.trim_end_matches('/');
    l.ends_with(&format!(" {path}")) || l.contains(&format!(" {path} -> "))
}

/// An output tar's listing (names without the leading `./`) and its files.
struct Tar {
    path: PathBuf,
    listing: String,
}

impl Tar {
    fn open(path: PathBuf) -> Tar {
        let o = Command::new("tar").arg("-tvf").arg(&path).output().unwrap();
        assert!(o.status.success(), "tar -tvf {}", path.display());
        let listing = String::from_utf8_lossy(&o.stdout).replace(" ./", " ");
        Tar { path, listing }
    }

    /// The listing line of `path`, e.g. `-rw------- 0/0 …`.
    fn entry(&self, path: &str) -> &str {
        self.listing
            .lines()
            .find(|l| names(l, path))
            .unwrap_or_else(|| panic!("{} has no {path}", self.path.display()))
    }

    fn has(&self, path: &str) -> bool {
        self.listing.lines().any(|l| names(l, path))
    }

    fn read(&self, path: &str) -> String {
        let o = Command::new("tar")
            .arg("-xOf")
            .arg(&self.path)
            .arg(format!("./{path}"))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{} has no file {path}",
            self.path.display()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

/// The headline command of a diskimage-builder user, with `-x` (nodepool
/// always traces) and nothing cached: diskimage-builder's debian-minimal
/// bootstraps (its root.d mounts and chroots: emulated), kiln's vm stands in
/// for diskimage-builder's, and the disk boots under BIOS and UEFI.
#[test]
fn debian_minimal_vm_traced_from_an_empty_cache_boots_bios_and_uefi() {
    let s = Scratch::new("dib-minimal");
    let cache = s.join("cache");
    let o = run_ok(
        dib(
            &s.path,
            &["-x", "-t", "qcow2", "-o", "img", "debian-minimal", "vm"],
        )
        .env("DIB_IMAGE_CACHE", &cache),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("root.d/08-debootstrap") && err.contains("+ sudo sh -c"),
        "diskimage-builder's bootstrap hook did not run traced:\n{err}"
    );
    assert!(
        err.contains("flavour `vm`: kiln's built-in")
            && err.contains("stands in for diskimage-builder's"),
        "no plan line says kiln's vm stands in:\n{err}"
    );
    let image = s.join("img.qcow2");
    let console = boot_to_login(&image, Firmware::Bios).console();
    assert!(console.contains("Debian GNU/Linux 12"), "{console}");
    boot_to_login(&image, Firmware::Uefi);
}

/// nodepool-builder's exact command line (nodepool/builder.py), `-x` included,
/// from an empty cache.
#[test]
fn nodepool_builders_command_line_builds() {
    let s = Scratch::new("dib-nodepool");
    let out = s.join("images");
    std::fs::create_dir_all(&out).unwrap();
    chown_to_user(&out);
    let name = out.join("debian-bookworm-0000000001");
    let mirror = host_mirror();
    run_ok(
        dib(
            &s.path,
            &[
                "-x",
                "-t",
                "qcow2,raw",
                "--checksum",
                "--no-tmpfs",
                "--qemu-img-options",
                "compat=0.10",
                "-o",
                name.to_str().unwrap(),
                "debian-minimal",
                "vm",
                "growroot",
                "openssh-server",
            ],
        )
        .env("DIB_CHECKSUM", "1")
        .env("DIB_IMAGE_CACHE", s.join("dib-cache"))
        .env("DIB_DISTRIBUTION_MIRROR", &mirror),
    );
    for ext in ["qcow2", "raw"] {
        let image = format!("{}.{ext}", name.display());
        for (sum, tool) in [("md5", "md5sum"), ("sha256", "sha256sum")] {
            let recorded = std::fs::read_to_string(format!("{image}.{sum}"))
                .unwrap_or_else(|e| panic!("{image}.{sum}: {e}"));
            let o = Command::new(tool).arg(&image).output().unwrap();
            let actual = String::from_utf8_lossy(&o.stdout);
            assert_eq!(
                recorded.split_whitespace().next(),
                actual.split_whitespace().next(),
                "{image}.{sum}"
            );
        }
    }
    let info = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(format!("{}.qcow2", name.display()))
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains("\"compat\": \"0.10\""), "{info}");
    // The manifests element saves the image's manifests beside it.
    let saved = PathBuf::from(format!("{}.d/dib-manifests", name.display()));
    let args = std::fs::read_to_string(saved.join("dib_arguments"))
        .unwrap_or_else(|e| panic!("{}: {e}", saved.display()));
    assert!(args.contains("compat=0.10"), "{args}");
}

/// The elements operators use most, together with debian-minimal and vm:
/// each one's work is checked in the tar, and the disk boots and shows it.
#[test]
fn common_elements_do_their_jobs_and_boot_together() {
    let s = Scratch::new("dib-common");
    let elements = [
        "debian-minimal",
        "vm",
        "growroot",
        "cloud-init",
        "cloud-init-datasources",
        "devuser",
        "dhcp-all-interfaces",
        "enable-serial-console",
        "openssh-server",
        "install-static",
        "package-installs",
        "pkg-map",
        "runtime-ssh-host-keys",
        "sysctl",
        "modprobe",
        "manifests",
        "element-manifest",
        "install-bin",
        "cache-url",
        "dib-init-system",
    ];
    let mut args = vec!["-t", "tar,qcow2", "-o", "common"];
    args.extend(elements);
    let o = run_ok(
        dib(&s.path, &args)
            .env("DIB_CLOUD_INIT_DATASOURCES", "ConfigDrive")
            .env("DIB_DEV_USER_PWDLESS_SUDO", "yes")
            .env("DIB_DEV_USER_PASSWORD", DEV_PASSWORD)
            .env("DIB_MODPROBE_BLACKLIST", "floppy"),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("enable-serial-console/cleanup.d/99-fix-grub is not executable"),
        "diskimage-builder skips its non-executable 99-fix-grub; kiln must say so:\n{err}"
    );
    let t = Tar::open(s.join("common.tar"));
    let wants = "etc/systemd/system/multi-user.target.wants";

    // growroot: its script (install-static), its unit (dib-init-system), enabled.
    assert!(t.has("usr/local/sbin/growroot"));
    assert!(t.has(&format!("{wants}/growroot.service")));
    // cloud-init: installed, its units enabled, and its own sudo-in-target edit made.
    assert!(t.has("usr/bin/cloud-init"));
    assert!(t.has("etc/systemd/system/cloud-init.target.wants/cloud-init.service"));
    assert!(t
        .read("etc/cloud/cloud.cfg")
        .contains("ssh_genkeytypes:  ['rsa', 'ecdsa', 'ed25519']"));
    // cloud-init-datasources
    assert!(t
        .read("etc/cloud/cloud.cfg.d/91-dib-cloud-init-datasources.cfg")
        .contains("ConfigDrive"));
    // devuser: the account, its home, password-less sudo.
    assert!(t.read("etc/passwd").contains("devuser:x:"));
    assert!(t.entry("home/devuser").starts_with('d'));
    assert!(t.read("etc/sudoers.d/devuser").contains("NOPASSWD"));
    // dhcp-all-interfaces: the script and udev rule it keeps in install.d.
    assert!(t.has("usr/local/sbin/dhcp-all-interfaces.sh"));
    assert!(t.has("etc/udev/rules.d/99-dhcp-all-interfaces.rules"));
    // enable-serial-console
    assert!(t.has("etc/udev/rules.d/99-serial-console.rules"));
    // openssh-server: installed, enabled, hardened.
    assert!(t.has("usr/sbin/sshd"));
    assert!(t.has(&format!("{wants}/ssh.service")));
    assert!(t.read("etc/ssh/sshd_config").contains("\nMACs "));
    // runtime-ssh-host-keys: the boot-time generator enabled, no key baked in.
    assert!(t.has("usr/local/sbin/runtime-ssh-host-keys.sh"));
    assert!(t.has(&format!("{wants}/ssh-keygen.service")));
    assert!(
        !t.listing.contains("etc/ssh/ssh_host_"),
        "host keys in the image"
    );
    // install-bin, sysctl, cache-url, pkg-map, package-installs, dib-init-system
    for bin in [
        "install-packages",
        "sysctl-set-value",
        "cache-url",
        "pkg-map",
        "package-installs-v2",
        "dib-init-system",
    ] {
        assert!(
            t.has(&format!("usr/local/bin/{bin}")),
            "no /usr/local/bin/{bin}"
        );
    }
    assert!(t.has("usr/share/pkg-map/dhcp-all-interfaces"));
    // package-installs through pkg-map: dhcp-all-interfaces' `dhcp-client`.
    assert!(t.has("sbin/dhclient") || t.has("usr/sbin/dhclient"));
    assert!(t.has("usr/bin/curl"), "cache-url's package");
    // modprobe
    assert_eq!(
        t.read("etc/modprobe.d/blacklist.conf").trim(),
        "blacklist floppy"
    );
    // manifests and element-manifest: inside the image, root-only, and beside it.
    assert!(t
        .entry("etc/dib-manifests/dib_arguments")
        .starts_with("-rw-------"));
    assert!(t
        .read("etc/dib-manifests/dib_arguments")
        .contains("element-manifest"));
    let listed = t.read("etc/dib-manifests/dib-element-manifest");
    for e in elements {
        assert!(
            listed.lines().any(|l| l == e),
            "{e} not in dib-element-manifest"
        );
    }
    assert!(s
        .join("common.d/dib-manifests/dib-element-manifest")
        .is_file());
    // sysprep (pulled in by debootstrap)
    assert_eq!(t.read("etc/machine-id"), "uninitialized\n");

    // One boot shows them at work: the devuser logs in on the serial console,
    // sudo without a password, ssh running with keys made at this boot.
    let mut g = boot_to_login(&s.join("common.qcow2"), Firmware::Bios);
    g.send_line("devuser").unwrap();
    g.wait_for("assword:", Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e:#}"));
    g.send_line(DEV_PASSWORD).unwrap();
    g.wait_for("$ ", Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e:#}"));
    g.send_line(
        "sudo -n cat /etc/dib-manifests/dib-element-manifest | grep -c . | sed 's/^/elements=/'; \
         systemctl is-active ssh | sed 's/^/ssh=/'; \
         ls /etc/ssh/ssh_host_ed25519_key.pub; echo done-$((6*7))",
    )
    .unwrap();
    g.wait_for("done-42", Duration::from_secs(180))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let console = g.console();
    assert!(console.contains("ssh=active"), "{console}");
    assert!(
        console.contains(&format!(
            "elements={}",
            listed.lines().filter(|l| !l.is_empty()).count()
        )),
        "{console}"
    );
    assert!(
        console.contains("/etc/ssh/ssh_host_ed25519_key.pub\r\n")
            || console.contains("/etc/ssh/ssh_host_ed25519_key.pub\n"),
        "{console}"
    );
}

/// kiln's own flavours and diskimage-builder's elements in one build: kiln's
/// `debian` bootstraps, diskimage-builder's elements (and their `base`) add.
#[test]
fn kilns_flavours_and_diskimage_builders_elements_mix() {
    let s = Scratch::new("dib-mixed");
    run_ok(
        dib(
            &s.path,
            &[
                "-t",
                "tar",
                "-o",
                "mixed",
                "debian",
                "modprobe",
                "element-manifest",
                "runtime-ssh-host-keys",
            ],
        )
        .env("DIB_MODPROBE_BLACKLIST", "pcspkr"),
    );
    let t = Tar::open(s.join("mixed.tar"));
    let listed = t.read("etc/dib-manifests/dib-element-manifest");
    for e in [
        "debian",
        "modprobe",
        "element-manifest",
        "runtime-ssh-host-keys",
        "base",
    ] {
        assert!(listed.lines().any(|l| l == e), "{e} not in:\n{listed}");
    }
    assert_eq!(
        t.read("etc/modprobe.d/blacklist.conf").trim(),
        "blacklist pcspkr"
    );
    assert!(t.has("usr/local/sbin/runtime-ssh-host-keys.sh"));
    // kiln's debian flavour's packages.
    assert!(t.has("usr/bin/apt-get"));
}

/// simple-init (nodepool's network setup): glean comes from the Python package
/// index through its `source` install type, which diskimage-builder's
/// install-types links into install.d during extra-data.d. Its git repository
/// is not reachable from here, so the `glean` source repository is set to
/// another install type, as an offline operator would.
#[test]
fn simple_init_installs_glean_through_its_install_type() {
    let s = Scratch::new("dib-simple-init");
    // What an operator behind a TLS-inspecting proxy adds: pip inside the image
    // trusts what the build host trusts (its CA bundle, read host side).
    let flavours = s.flavour(
        "host-ca",
        &[
            (
                "README.rst",
                "pip in the image trusts the build host's CAs.\n",
                false,
            ),
            (
                "extra-data.d/50-host-ca",
                "#!/bin/bash\nset -eu\nmkdir -p $TMP_HOOKS_PATH/host-ca\n\
                 cp /etc/ssl/certs/ca-certificates.crt $TMP_HOOKS_PATH/host-ca/bundle.crt\n",
                true,
            ),
            (
                "environment.d/50-host-ca",
                "export PIP_CERT=/tmp/in_target.d/host-ca/bundle.crt\n",
                false,
            ),
        ],
    );
    run_ok(
        dib(
            &s.path,
            &[
                "-t",
                "tar",
                "-o",
                "si",
                "debian-minimal",
                "host-ca",
                "simple-init",
            ],
        )
        .env(
            "ELEMENTS_PATH",
            format!("{}:{}", flavours.display(), dib_elements().display()),
        )
        .env("DIB_INSTALLTYPE_glean", "package"),
    );
    let t = Tar::open(s.join("si.tar"));
    assert!(t.has("usr/glean/bin/glean"), "glean was not installed");
    assert!(t.has("usr/local/bin/glean-install"));
    assert!(t.read("etc/modules").contains("8021q"));
    // glean-install (run by simple-init's install.d) puts its units in place.
    assert!(t.has("usr/lib/systemd/system/glean@.service"));
    assert!(t.has("usr/lib/systemd/system/glean-early.service"));
    assert!(
        !t.has("usr/bin/cloud-init"),
        "simple-init uninstalls cloud-init"
    );
}

/// Naming one of diskimage-builder's block-device elements gives the layout its
/// own YAML describes (kiln's stand-in reads it).
#[test]
fn diskimage_builders_block_device_elements_keep_their_layouts() {
    let s = Scratch::new("dib-layouts");
    for (element, layout) in [
        ("block-device-mbr", "mbr"),
        ("block-device-efi", "gpt"),
        ("block-device-gpt", "gpt"),
    ] {
        let o = run_ok(&mut dib(
            &s.path,
            &["--dry-run", "-o", "x", "debian-minimal", "vm", element],
        ));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            out.lines().any(|l| l == format!("disk layout: {layout}")),
            "{element}:\n{out}"
        );
        assert!(
            out.contains(&format!("note: flavour `{element}`: kiln's built-in")),
            "{element}:\n{out}"
        );
    }
}
