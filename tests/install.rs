//! Installing kiln as README's "Installing" says: the Debian package from
//! `make deb` installed with apt, and `make install PREFIX=…`; then used by an
//! ordinary user from PATH alone, outside the source tree, with no
//! KILN_BUILTIN_FLAVOURS: flavours, man pages and bash completion.

mod common;

use common::{env, output_text, Scratch};
use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> Output {
    let o = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(o.status.success(), "{cmd:?} failed:\n{}", output_text(&o));
    o
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `make TARGET…` in the source tree, as root.
fn make(args: &[&str]) -> Output {
    let started = Instant::now();
    let o = run(Command::new("make").arg("-C").arg(repo()).args(args));
    eprintln!(
        "make {}: {:.1} s",
        args.join(" "),
        started.elapsed().as_secs_f64()
    );
    o
}

/// A bash script run as the test user with a clean environment: PATH as given,
/// the user's HOME, `vars`, and `cwd` as working directory.
fn as_user(script: &str, path: &str, cwd: &Path, vars: &[(&str, &str)]) -> Output {
    let u = env()
        .user
        .as_ref()
        .expect("these tests install packages: run them as root (CI does)");
    let mut cmd = Command::new("/bin/bash");
    cmd.arg("-c")
        .arg(script)
        .env_clear()
        .env("PATH", path)
        .env("HOME", &u.home)
        .env("USER", &u.name)
        .env("LOGNAME", &u.name)
        .env("LANG", "C.UTF-8")
        .envs(vars.iter().copied())
        .current_dir(cwd)
        .uid(u.uid)
        .gid(u.gid);
    run(&mut cmd)
}

/// Loads COMMAND's completion the way interactive bash does (bash-completion's
/// on-demand loader, which looks in its completion directories), then calls
/// the function it registered with COMP_WORDS = `words` and prints COMPREPLY.
const COMPLETE: &str = r#"
source /usr/share/bash-completion/bash_completion
_completion_loader "$1"
spec=$(complete -p "$1") || { echo "no completion registered for $1" >&2; exit 1; }
func=$(sed -n 's/.*-F \([^ ]*\) .*/\1/p' <<<"$spec")
[ -n "$func" ] || { echo "no function in: $spec" >&2; exit 1; }
COMP_WORDS=("$@")
COMP_CWORD=$(( $# - 1 ))
COMP_LINE="$*"
COMP_POINT=${#COMP_LINE}
COMPREPLY=()
"$func" "$1" "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\n' "${COMPREPLY[@]}"
"#;

fn complete(words: &[&str], path: &str, cwd: &Path, vars: &[(&str, &str)]) -> BTreeSet<String> {
    let script = format!("{COMPLETE}\n");
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let o = as_user(
        &format!("set -- {}\n{script}", quoted.join(" ")),
        path,
        cwd,
        vars,
    );
    stdout(&o)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

fn source_flavours() -> BTreeSet<String> {
    std::fs::read_dir(repo().join("flavours"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// The dry run resolves `debian vm` from `flavours` and nothing of the source tree.
fn assert_dry_run_uses(flavours: &Path, path: &str, cwd: &Path) {
    let o = as_user(
        "command -v disk-image-create && disk-image-create --dry-run -o x debian vm",
        path,
        cwd,
        &[],
    );
    let out = stdout(&o);
    for f in ["base", "debian", "vm"] {
        let dir = flavours.join(f).display().to_string();
        assert!(
            out.lines()
                .any(|l| l.split_whitespace().eq([f, dir.as_str()])),
            "the dry run does not take {f} from {dir}:\n{}",
            output_text(&o)
        );
    }
    assert!(
        !out.contains(&repo().display().to_string()),
        "the installed kiln used the source tree:\n{}",
        output_text(&o)
    );
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Removes the package however the test ends, so later tests (which run the
/// build's binaries by path) see the machine as before.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        remove_package();
    }
}

fn remove_package() {
    let o = Command::new("apt-get")
        .args([
            "remove",
            "-y",
            "-q",
            "-o",
            "DPkg::Lock::Timeout=300",
            "kiln",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output();
    match o {
        Ok(o) if o.status.success() => {}
        Ok(o) => eprintln!("apt-get remove kiln failed:\n{}", output_text(&o)),
        Err(e) => eprintln!("apt-get remove kiln: {e}"),
    }
}

#[test]
fn debian_package_installs_with_apt_and_works_for_an_ordinary_user() {
    assert!(
        nix::unistd::getuid().is_root(),
        "installing a package needs root: run the tests as root (CI does)"
    );
    make(&["deb"]);
    let arch = stdout(&run(Command::new("dpkg").arg("--print-architecture")));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(|d| repo().join(d))
        .unwrap_or_else(|| repo().join("target"));
    let deb = target.join(format!(
        "debian/kiln_{}_{}.deb",
        env!("CARGO_PKG_VERSION"),
        arch.trim()
    ));
    let size = std::fs::metadata(&deb)
        .unwrap_or_else(|e| panic!("make deb wrote no {}: {e}", deb.display()))
        .len();
    eprintln!("{}: {} KiB", deb.display(), size / 1024);

    let control = stdout(&run(Command::new("dpkg-deb").arg("-f").arg(&deb)));
    for field in [
        "Package: kiln",
        &format!("Version: {}", env!("CARGO_PKG_VERSION")),
        "libseccomp2",
        "mmdebstrap",
        "uidmap",
        "qemu-utils",
    ] {
        assert!(
            control.contains(field),
            "control lacks {field:?}:\n{control}"
        );
    }

    // A package left by a killed run has the same version, and apt would keep it.
    remove_package();
    let guard = Installed;
    run(Command::new("apt-get")
        .args([
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "-o",
            "DPkg::Lock::Timeout=300",
        ])
        .arg(&deb)
        .env("DEBIAN_FRONTEND", "noninteractive"));
    let status = stdout(&run(Command::new("dpkg-query").args([
        "-W",
        "-f=${Status}",
        "kiln",
    ])));
    assert_eq!(status, "install ok installed");

    let helper = Path::new("/usr/libexec/kiln/kiln-helper");
    assert_eq!(
        mode(helper),
        0o755,
        "the packaged kiln-helper must not be setuid"
    );
    let meta = std::fs::metadata("/usr/bin/disk-image-create").unwrap();
    assert_eq!((meta.uid(), meta.gid()), (0, 0), "files belong to root");
    let copyright = std::fs::read_to_string("/usr/share/doc/kiln/copyright").unwrap();
    assert!(copyright.contains("Apache-2.0"));
    for link in ["mount", "umount", "mknod", "chroot"] {
        let p = Path::new("/usr/share/kiln/dib-lib/host-bin").join(link);
        assert_eq!(
            std::fs::read_link(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
            Path::new("kiln-emulate")
        );
    }
    let sudoers = std::fs::read_to_string("/usr/share/doc/kiln/examples/sudoers.d/kiln").unwrap();
    assert!(
        sudoers.contains("/usr/libexec/kiln/kiln-helper attach") && !sudoers.contains("/usr/local"),
        "the sudoers example must name the packaged helper:\n{sudoers}"
    );
    for f in [
        "/usr/share/zsh/vendor-completions/_disk-image-create",
        "/usr/share/fish/vendor_completions.d/disk-image-create.fish",
        "/usr/share/kiln/seccomp/default.json",
    ] {
        assert!(Path::new(f).is_file(), "{f} is not installed");
    }

    let scratch = Scratch::new("install-deb");
    let path = "/usr/bin:/bin";
    let o = as_user("command -v disk-image-create", path, &scratch.path, &[]);
    assert_eq!(stdout(&o).trim(), "/usr/bin/disk-image-create");
    assert_dry_run_uses(Path::new("/usr/share/kiln/flavours"), path, &scratch.path);

    for cmd in [
        "disk-image-create",
        "ramdisk-image-create",
        "disk-image-get-kernel",
    ] {
        let o = as_user(&format!("man -w {cmd}"), path, &scratch.path, &[]);
        assert_eq!(
            stdout(&o).trim(),
            format!("/usr/share/man/man1/{cmd}.1.gz"),
            "man finds {cmd}'s page"
        );
    }
    let page = stdout(&as_user(
        "man -P cat disk-image-create",
        path,
        &scratch.path,
        &[("MANWIDTH", "100")],
    ));
    for text in ["--checksum", "ELEMENTS_PATH", "FLAVOUR"] {
        assert!(page.contains(text), "the man page lacks {text}:\n{page}");
    }
    assert!(
        !page.contains("list-flavours"),
        "a hidden option is in the man page"
    );

    // Options complete from clap's definition…
    let got = complete(&["disk-image-create", "--che"], path, &scratch.path, &[]);
    assert_eq!(got, BTreeSet::from(["--checksum".to_string()]));
    let got = complete(&["disk-image-get-kernel", "-"], path, &scratch.path, &[]);
    assert!(got.contains("-i") && got.contains("-o"), "{got:?}");
    // …flavour names from the installed flavours, after options…
    let got = complete(
        &["disk-image-create", "--checksum", "-o", "x", ""],
        path,
        &scratch.path,
        &[],
    );
    assert_eq!(got, source_flavours(), "flavour names after the options");
    let got = complete(&["disk-image-create", "-x", "de"], path, &scratch.path, &[]);
    assert!(got.contains("debian") && got.contains("devuser"), "{got:?}");
    assert!(got.iter().all(|f| f.starts_with("de")), "{got:?}");
    let got = complete(&["ramdisk-image-create", "ramd"], path, &scratch.path, &[]);
    assert_eq!(got, BTreeSet::from(["ramdisk".to_string()]));
    // …but not where an option takes a value…
    let got = complete(&["disk-image-create", "-o", "de"], path, &scratch.path, &[]);
    assert!(
        !got.contains("debian"),
        "-o takes a file name, not a flavour: {got:?}"
    );
    // …and the user's own flavours on ELEMENTS_PATH too.
    let mine = scratch.flavour("my-own-flavour", &[("README.md", "mine\n", false)]);
    let mine = mine.display().to_string();
    let got = complete(
        &["disk-image-create", "my"],
        path,
        &scratch.path,
        &[("ELEMENTS_PATH", &mine)],
    );
    assert_eq!(got, BTreeSet::from(["my-own-flavour".to_string()]));
    let got = complete(&["disk-image-create", "--"], path, &scratch.path, &[]);
    assert!(
        got.contains("--dry-run") && !got.contains("--list-flavours"),
        "{got:?}"
    );

    drop(guard);
    assert!(
        !Path::new("/usr/bin/disk-image-create").exists() && !Path::new("/usr/share/kiln").exists(),
        "apt-get remove kiln left files behind"
    );
}

#[test]
fn make_install_into_a_prefix_works_for_an_ordinary_user() {
    assert!(
        nix::unistd::getuid().is_root(),
        "the test user runs the install: run the tests as root (CI does)"
    );
    let scratch = Scratch::new("install-prefix");
    let prefix = scratch.join("prefix");
    let prefix_arg = format!("PREFIX={}", prefix.display());
    make(&["install", &prefix_arg]);

    let helper = prefix.join("libexec/kiln/kiln-helper");
    assert_eq!(
        mode(&helper),
        0o755,
        "kiln-helper is installed without setuid by default"
    );
    for bin in [
        "disk-image-create",
        "ramdisk-image-create",
        "disk-image-get-kernel",
    ] {
        assert_eq!(mode(&prefix.join("bin").join(bin)), 0o755);
    }
    assert!(
        !prefix.join("bin/kiln-helper").exists(),
        "kiln-helper belongs in libexec"
    );
    assert!(
        !prefix.join("bin/gen-docs").exists(),
        "the doc generator is not installed"
    );
    for link in ["mount", "umount", "mknod", "chroot"] {
        let p = prefix.join("share/kiln/dib-lib/host-bin").join(link);
        let meta = std::fs::symlink_metadata(&p).unwrap();
        assert!(
            meta.file_type().is_symlink(),
            "{} is no longer a symlink",
            p.display()
        );
    }
    let sudoers =
        std::fs::read_to_string(prefix.join("share/doc/kiln/examples/sudoers.d/kiln")).unwrap();
    assert!(sudoers.contains(&format!(
        "{}/libexec/kiln/kiln-helper attach",
        prefix.display()
    )));

    let path = format!("{}/bin:/usr/bin:/bin", prefix.display());
    let o = as_user("command -v disk-image-create", &path, &scratch.path, &[]);
    assert_eq!(
        PathBuf::from(stdout(&o).trim()),
        prefix.join("bin/disk-image-create")
    );
    assert_dry_run_uses(&prefix.join("share/kiln/flavours"), &path, &scratch.path);
    // man finds pages beside the PATH entry (PREFIX/share/man), bash-completion
    // in XDG_DATA_HOME: so PREFIX=~/.local needs no setup.
    let o = as_user("man -w disk-image-create", &path, &scratch.path, &[]);
    assert_eq!(
        PathBuf::from(stdout(&o).trim()),
        prefix.join("share/man/man1/disk-image-create.1")
    );
    let data_home = prefix.join("share").display().to_string();
    let got = complete(
        &["disk-image-create", "-n", "vm"],
        &path,
        &scratch.path,
        &[("XDG_DATA_HOME", &data_home)],
    );
    assert_eq!(got, BTreeSet::from(["vm".to_string()]));

    // A copy without its share/kiln says so, though the source tree it was
    // built from is right there.
    let lonely = scratch.join("lonely");
    std::fs::create_dir_all(lonely.join("bin")).unwrap();
    std::fs::copy(
        prefix.join("bin/disk-image-create"),
        lonely.join("bin/disk-image-create"),
    )
    .unwrap();
    let mut cmd = Command::new("/bin/bash");
    cmd.arg("-c")
        .arg("disk-image-create --dry-run -o x debian vm")
        .env_clear()
        .env("PATH", format!("{}/bin:/usr/bin:/bin", lonely.display()))
        .env("HOME", &env().user.as_ref().unwrap().home)
        .current_dir(&scratch.path)
        .uid(env().user.as_ref().unwrap().uid)
        .gid(env().user.as_ref().unwrap().gid)
        .stdin(Stdio::null());
    let o = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    let expected = lonely.join("share/kiln/flavours").display().to_string();
    assert!(
        !o.status.success()
            && err.contains("built-in flavours are not installed")
            && err.contains(&expected)
            && err.contains("KILN_BUILTIN_FLAVOURS"),
        "a kiln without its data must say where it looked:\n{}",
        output_text(&o)
    );

    // Again, setuid, over the first install.
    make(&["install", &prefix_arg, "SETUID_HELPER=1"]);
    assert_eq!(
        mode(&helper),
        0o4755,
        "SETUID_HELPER=1 installs kiln-helper setuid"
    );
    let meta = std::fs::metadata(&helper).unwrap();
    assert_eq!(meta.uid(), 0, "a setuid helper must be root's");

    make(&["uninstall", &prefix_arg]);
    let left: Vec<String> = walk(&prefix)
        .into_iter()
        .filter(|p| !p.is_dir() || p.is_symlink())
        .map(|p| p.display().to_string())
        .collect();
    assert!(left.is_empty(), "make uninstall left {left:?}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() && !p.is_symlink() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}
