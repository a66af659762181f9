//! diskimage-builder's core contract, as its own elements rely on it: what a hook
//! inherits (and must not inherit), the variables and functions it sees, `sudo` on
//! the host side, and how element trees merge. One traced build (`-x -x`, tar
//! output) with DIB-like elements written here serves every test.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

const README: (&str, &str, bool) = ("README.rst", "test element\n", false);

/// An install.d hook that opts into tracing as DIB's hooks do, then records what a
/// bash child of it inherits and runs ldd (a bash script that breaks under an
/// inherited nounset).
const TRACE_HOOK: &str = r#"#!/bin/bash
if [ ${DIB_DEBUG_TRACE:-0} -gt 0 ]; then set -x; fi
set -eu
set -o pipefail
out=/root/kiln-dib
mkdir -p $out
echo "$DIB_DEBUG_TRACE" > $out/debug_trace
bash -c 'echo "SHELLOPTS=$SHELLOPTS"; set -o' > $out/child_options
ldd /bin/true > $out/ldd
"#;

/// A root.d hook doing what diskimage-builder's root.d hooks and bootstrappers do
/// as real root: mknod, mount sysfs and devtmpfs, chroot. Each result is recorded.
const ROOT_PROBE_HOOK: &str = r#"#!/bin/bash
set -eu
set -o pipefail
r=$TARGET_ROOT
out=$r/root/kiln-dib
mkdir -p $out
{
    rm -f $r/dev/full
    sudo mknod -m 666 $r/dev/full c 1 7
    echo "mknod_full=$([ -c $r/dev/full ] && echo char) $(head -c 3 $r/dev/full | od -An -tx1 | tr -d ' ')"
    if mknod $r/tmp/not-a-standard-node c 1 3 2>/dev/null; then echo "other_node=made"; else echo "other_node=refused"; fi
    mkdir -p $r/tmp/probe-sys $r/tmp/probe-dev
    sudo mount -o ro -t sysfs none $r/tmp/probe-sys
    echo "sysfs=$([ -d $r/tmp/probe-sys/kernel ] && echo yes) ro=$(touch $r/tmp/probe-sys/x 2>/dev/null && echo no || echo yes)"
    sudo umount $r/tmp/probe-sys
    echo "sysfs_unmounted=$([ -d $r/tmp/probe-sys/kernel ] && echo no || echo yes)"
    mount -t devtmpfs devtmpfs $r/tmp/probe-dev
    echo "devtmpfs=$([ -c $r/tmp/probe-dev/null ] && [ -c $r/tmp/probe-dev/urandom ] && echo yes)"
    umount $r/tmp/probe-dev
    rmdir $r/tmp/probe-sys $r/tmp/probe-dev
    echo "chroot=$(sudo chroot $r /bin/sh -c 'echo x > /dev/null && head -c 1 /dev/urandom | wc -c')"
} > $out/root_probe 2>&1
"#;

/// A host-side hook (extra-data.d and cleanup.d) under `set -u`: diskimage-builder's
/// core variables and functions, recorded in the image.
const HOST_ENV_HOOK: &str = r#"#!/bin/bash
set -eu
set -o pipefail
phase=$(basename $(dirname $0))
out=$TMP_MOUNT_PATH/root/kiln-dib
mkdir -p $out
{
    echo "same_root=$([ "$TMP_MOUNT_PATH" = "$TARGET_ROOT" ] && [ -d "$TMP_MOUNT_PATH/etc" ] && echo yes)"
    echo "DIB_IMAGE_CACHE=$DIB_IMAGE_CACHE"
    echo "PWD=$PWD"
    echo "HOME=$HOME"
    echo "cache_is_dir=$([ -d "$DIB_IMAGE_CACHE" ] && echo yes)"
    echo "DIB_OFFLINE=[$DIB_OFFLINE]"
    echo "DIB_DEFAULT_INSTALLTYPE=$DIB_DEFAULT_INSTALLTYPE"
    echo "DIB_INIT_SYSTEM=$DIB_INIT_SYSTEM"
    echo "DIB_DEBUG_TRACE=$DIB_DEBUG_TRACE"
    echo "IMAGE_NAME=$IMAGE_NAME"
    echo "DIB_ARGS=$DIB_ARGS"
    echo "ELEMENTS_PATH=$ELEMENTS_PATH"
    echo "python=$($DIB_PYTHON_EXEC -c 'import sys; print(sys.version_info[0])')"
    echo "lib_files=$(cd $_LIB && ls common-defaults common-functions die img-defaults img-functions | tr '
' ' ')"
    echo "die=$(type -t die)"
    rc=0; msg=$(bash -c 'false || die "gone"') || rc=$?
    echo "die_exit=$msg $rc"
    eval declare -A elements=($(get_image_element_array))
    echo "element_dib_env=${elements[dib-env]}"
    # DIB_ENV is `declare -p` output: evaluating it gives the caller's values back.
    eval "$DIB_ENV"
    echo "DIB_KILN_TEST=$DIB_KILN_TEST"
    if [ $phase = cleanup.d ]; then
        source $_LIB/img-functions
        source $_LIB/img-defaults
        select_boot_kernel_initrd $TMP_MOUNT_PATH
        echo "kernel=$KERNEL ramdisk=$RAMDISK bootdir=$([ -f $BOOTDIR/$KERNEL ] && echo ok)"
        echo "pts_options=$(mount_dev_pts_options)"
    fi
} > $out/host-$phase
"#;

/// The same, inside the image (install.d): what a hook there must see, and that
/// host paths and host-side functions stay outside.
const INSIDE_ENV_HOOK: &str = r#"#!/bin/bash
set -eu
set -o pipefail
out=/root/kiln-dib
mkdir -p $out
{
    echo "DIB_OFFLINE=[$DIB_OFFLINE]"
    echo "DIB_DEFAULT_INSTALLTYPE=$DIB_DEFAULT_INSTALLTYPE"
    echo "DIB_INIT_SYSTEM=$DIB_INIT_SYSTEM"
    echo "DIB_DEBUG_TRACE=$DIB_DEBUG_TRACE"
    echo "IMAGE_NAME=$IMAGE_NAME"
    echo "die=$(type -t die || echo none)"
    echo "sudo=$(command -v sudo || echo none)"
    echo "element_array=$(type -t get_image_element_array || echo none)"
    for v in TMP_MOUNT_PATH DIB_IMAGE_CACHE _LIB DIB_ARGS DIB_ENV DIB_PYTHON_EXEC; do
        echo "$v=${!v-unset}"
    done
} > $out/inside
"#;

const DIB_KILN_TEST: &str = r#"a "quoted" $value `x` \ end"#;

/// DIB's host-side hooks `sudo` their privileged steps, in these forms.
const SUDO_HOOK: &str = r#"#!/bin/bash
set -eu
set -o pipefail
out=$TMP_MOUNT_PATH/root/kiln-dib
sudo -E mkdir -p $out/sudo
echo teed | sudo tee $out/sudo/tee > /dev/null
sudo -n -H -u root -- sh -c "echo \$DIB_DEBUG_TRACE > $out/sudo/env_kept"
sudo DIB_SUDO_VAR=assigned sh -c "echo \$DIB_SUDO_VAR > $out/sudo/assignment"
sudo /bin/bash -c "echo bash-c > $out/sudo/bash_c"
rc=0; sudo -u nobody true 2> $out/sudo/other_user_error || rc=$?
echo $rc > $out/sudo/other_user_status
command -v sudo > $out/sudo/which
"#;

/// Reads the merged element trees from inside the image, as DIB's elements do.
const TREE_HOOK: &str = r#"#!/bin/bash
set -eu
set -o pipefail
out=/root/kiln-dib/tree
mkdir -p $out
hooks=$(dirname $0)/..
$hooks/bin/dib-tool-a > $out/bin_a
$TMP_HOOKS_PATH/bin/dib-tool-b > $out/bin_b
ls $hooks/init-scripts/systemd > $out/init_scripts
cat $hooks/source-repository-dib-tree-a > $out/source_repository
cat $hooks/pkg-map > $out/top_level_last_wins
[ ! -e $hooks/tests ] && echo absent > $out/tests_dir
"#;

/// The same tree from the host side.
const TREE_HOST_HOOK: &str = r#"#!/bin/bash
set -eu
$TMP_HOOKS_PATH/bin/dib-tool-a > $TMP_MOUNT_PATH/root/kiln-dib/tree-host
"#;

struct ContractBuild {
    scratch: Scratch,
    /// Files of /root/kiln-dib in the image, by name.
    files: BTreeMap<String, String>,
    stderr: String,
    /// The tar's listing line of /dev/full, if it has one.
    dev_full: Option<String>,
}

fn contract_build() -> &'static ContractBuild {
    static B: OnceLock<ContractBuild> = OnceLock::new();
    B.get_or_init(|| {
        let (s, tmp) = scratch_with_tmp("dib-contract");
        s.flavour(
            "dib-trace",
            &[README, ("install.d/50-trace", TRACE_HOOK, true)],
        );
        s.flavour(
            "dib-env",
            &[
                README,
                ("extra-data.d/50-env-host", HOST_ENV_HOOK, true),
                ("cleanup.d/50-env-host", HOST_ENV_HOOK, true),
                ("install.d/50-env-inside", INSIDE_ENV_HOOK, true),
                ("extra-data.d/60-sudo", SUDO_HOOK, true),
            ],
        );
        let tool = |n: &str| format!("#!/bin/sh\necho tool {n}\n");
        let (tool_a, tool_b) = (tool("a"), tool("b"));
        s.flavour(
            "dib-tree-a",
            &[
                README,
                ("bin/dib-tool-a", &tool_a, true),
                ("init-scripts/systemd/a.service", "[Unit]\n", false),
                (
                    "source-repository-dib-tree-a",
                    "a git /tmp/a /srv/git/a.git\n",
                    false,
                ),
                ("pkg-map", "{\"from\": \"a\"}\n", false),
                ("tests/README", "not staged\n", false),
                ("install.d/70-tree", TREE_HOOK, true),
                ("extra-data.d/70-tree", TREE_HOST_HOOK, true),
            ],
        );
        s.flavour(
            "dib-tree-b",
            &[
                README,
                ("bin/dib-tool-b", &tool_b, true),
                ("init-scripts/systemd/b.service", "[Unit]\n", false),
                ("pkg-map", "{\"from\": \"b\"}\n", false),
            ],
        );
        s.flavour(
            "dib-root-probe",
            &[README, ("root.d/20-root-probe", ROOT_PROBE_HOOK, true)],
        );
        // As enable-serial-console ships it: mode 0644, no shebang; it must not run.
        let flavours = s.flavour(
            "dib-serial",
            &[README, ("cleanup.d/99-fix-grub", "exit 1\n", false)],
        );
        let out = s.join("img");
        let mut args = vec![
            "-x",
            "-x",
            "-t",
            "tar",
            "--install-type",
            "package",
            "-o",
            out.to_str().unwrap(),
        ];
        args.extend(IMAGE_FLAVOURS);
        args.extend([
            "dib-trace",
            "dib-env",
            "dib-tree-a",
            "dib-tree-b",
            "dib-root-probe",
            "dib-serial",
        ]);
        let o = run_ok(
            kiln("disk-image-create", &args)
                .env("ELEMENTS_PATH", test_flavours_path(&[&flavours]))
                .env("TMPDIR", &tmp)
                .env("DIB_KILN_TEST", DIB_KILN_TEST),
        );
        let tar = s.join("img.tar");
        let files = read_dir_from_tar(&tar, "root/kiln-dib");
        let listing = Command::new("tar").arg("-tvf").arg(&tar).output().unwrap();
        let dev_full = String::from_utf8_lossy(&listing.stdout)
            .lines()
            .find(|l| l.ends_with(" ./dev/full"))
            .map(str::to_string);
        ContractBuild {
            dev_full,
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            scratch: s,
            files,
        }
    })
}

fn read_dir_from_tar(tar: &std::path::Path, dir: &str) -> BTreeMap<String, String> {
    let x = tempfile::tempdir().unwrap();
    let st = Command::new("tar")
        .arg("-xf")
        .arg(tar)
        .arg("-C")
        .arg(x.path())
        .arg(format!("./{dir}"))
        .status()
        .unwrap();
    assert!(st.success(), "the tarball has no /{dir}");
    let mut m = BTreeMap::new();
    for e in std::fs::read_dir(x.path().join(dir))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_file())
    {
        m.insert(
            e.file_name().to_string_lossy().into_owned(),
            std::fs::read_to_string(e.path()).unwrap(),
        );
    }
    m
}

fn file(name: &str) -> &'static str {
    let b = contract_build();
    b.files.get(name).unwrap_or_else(|| {
        panic!(
            "no /root/kiln-dib/{name}; have {:?}",
            b.files.keys().collect::<Vec<_>>()
        )
    })
}

#[test]
fn repeated_x_counts_into_dib_debug_trace() {
    assert_eq!(file("debug_trace").trim(), "2");
}

#[test]
fn tracing_leaks_no_shell_options_into_a_hooks_children() {
    let opts = file("child_options");
    let shellopts = opts
        .lines()
        .find_map(|l| l.strip_prefix("SHELLOPTS="))
        .unwrap();
    for o in ["errexit", "nounset", "xtrace", "pipefail"] {
        assert!(
            !shellopts.split(':').any(|x| x == o),
            "a bash child inherited {o}: {shellopts}"
        );
        let line = opts
            .lines()
            .find(|l| l.split_whitespace().next() == Some(o))
            .unwrap_or_else(|| panic!("set -o lists no {o}:\n{opts}"));
        assert!(line.ends_with("off"), "{line}");
    }
    // The script that broke under the old leak works.
    assert!(file("ldd").contains("libc.so"), "{}", file("ldd"));
}

#[test]
fn hooks_still_trace_themselves() {
    let e = &contract_build().stderr;
    assert!(
        e.contains("+ ldd /bin/true"),
        "the hook's own set -x left no trace:\n{e}"
    );
}

#[test]
fn non_executable_hook_is_skipped_with_a_warning_at_run_time() {
    let e = &contract_build().stderr;
    assert!(
        e.contains("warning: cleanup.d/99-fix-grub (flavour dib-serial) skipped: not executable"),
        "{e}"
    );
}

/// `NAME=value` lines of a recorded file.
fn values(name: &str) -> BTreeMap<String, String> {
    file(name)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn user_home() -> PathBuf {
    env()
        .user
        .as_ref()
        .map(|u| u.home.clone())
        .unwrap_or_else(|| std::env::var("HOME").unwrap().into())
}

#[test]
fn host_side_hooks_see_diskimage_builders_core_variables() {
    let b = contract_build();
    let out = b.scratch.join("img").display().to_string();
    for phase in ["extra-data.d", "cleanup.d"] {
        let v = values(&format!("host-{phase}"));
        let home = user_home().display().to_string();
        let want_cache = user_home()
            .join(".cache/image-create")
            .display()
            .to_string();
        for (k, want) in [
            ("same_root", "yes"),
            ("DIB_IMAGE_CACHE", want_cache.as_str()),
            ("cache_is_dir", "yes"),
            ("DIB_OFFLINE", "[]"),
            ("DIB_DEFAULT_INSTALLTYPE", "package"),
            ("DIB_INIT_SYSTEM", "systemd"),
            ("DIB_DEBUG_TRACE", "2"),
            ("IMAGE_NAME", out.as_str()),
            ("python", "3"),
            (
                "lib_files",
                "common-defaults common-functions die img-defaults img-functions ",
            ),
            ("die", "function"),
            ("die_exit", "gone 1"),
            ("DIB_KILN_TEST", DIB_KILN_TEST),
            // Where disk-image-create was started, with the caller's HOME.
            ("PWD", home.as_str()),
            ("HOME", home.as_str()),
        ] {
            assert_eq!(
                v.get(k).map(String::as_str),
                Some(want),
                "{phase} {k}:\n{}",
                file(&format!("host-{phase}"))
            );
        }
        let args = &v["DIB_ARGS"];
        assert!(
            args.starts_with("-x -x -t tar --install-type package -o ")
                && args.contains(&out)
                && args.ends_with("dib-serial"),
            "{args}"
        );
        assert!(
            v["element_dib_env"].ends_with("/flavours/dib-env"),
            "{:?}",
            v["element_dib_env"]
        );
        // diskimage-builder's meaning: the search path in order, the caller's entries first,
        // the built-in flavours last.
        let search: Vec<&str> = v["ELEMENTS_PATH"].split(':').collect();
        assert!(
            search.len() >= 3
                && search[0].ends_with("/flavours")
                && search[1].ends_with("test-flavours"),
            "{search:?}"
        );
        assert!(
            search.last().unwrap().ends_with("/flavours")
                && !search.last().unwrap().contains("kiln-test-"),
            "{search:?}"
        );
    }
}

#[test]
fn host_side_hooks_can_source_the_library_functions_elements_call() {
    let v = values("host-cleanup.d");
    let k = &v["kernel"];
    assert!(
        k.starts_with("vmlinuz-")
            && k.contains(" ramdisk=initrd.img-")
            && k.ends_with(" bootdir=ok"),
        "{k}"
    );
    assert!(
        v["pts_options"].starts_with("-o rw,"),
        "{:?}",
        v["pts_options"]
    );
}

#[test]
fn hooks_inside_see_the_variables_but_no_host_paths_or_host_functions() {
    let v = values("inside");
    for (k, want) in [
        ("DIB_OFFLINE", "[]"),
        ("DIB_DEFAULT_INSTALLTYPE", "package"),
        ("DIB_INIT_SYSTEM", "systemd"),
        ("DIB_DEBUG_TRACE", "2"),
        ("IMAGE_NAME", "img"),
        ("die", "none"),
        ("element_array", "none"),
        ("TMP_MOUNT_PATH", "unset"),
        ("DIB_IMAGE_CACHE", "unset"),
        ("_LIB", "unset"),
        ("DIB_ARGS", "unset"),
        ("DIB_ENV", "unset"),
        ("DIB_PYTHON_EXEC", "unset"),
    ] {
        assert_eq!(
            v.get(k).map(String::as_str),
            Some(want),
            "{k}:\n{}",
            file("inside")
        );
    }
}

#[test]
fn host_side_hooks_have_a_sudo_that_runs_the_command_as_it_is() {
    let b = contract_build();
    let sudo = read_dir_from_tar(&b.scratch.join("img.tar"), "root/kiln-dib/sudo");
    assert_eq!(sudo["tee"], "teed\n");
    assert_eq!(sudo["env_kept"], "2\n", "sudo -E keeps the environment");
    assert_eq!(sudo["assignment"], "assigned\n");
    assert_eq!(sudo["bash_c"], "bash-c\n");
    assert_eq!(sudo["other_user_status"], "1\n");
    let err = &sudo["other_user_error"];
    assert!(
        err.contains("-u nobody") && err.contains("host-side hooks can only be root"),
        "{err}"
    );
    assert!(
        sudo["which"].trim().ends_with("/dib-lib/host-bin/sudo"),
        "{}",
        sudo["which"]
    );
    // Inside the image kiln's sudo is not on PATH: the image's own is (or none).
    let inside = &values("inside")["sudo"];
    assert!(!inside.contains("dib-lib"), "{inside}");
}

#[test]
fn element_trees_merge_into_the_hooks_directory_as_diskimage_builder() {
    let b = contract_build();
    let t = read_dir_from_tar(&b.scratch.join("img.tar"), "root/kiln-dib/tree");
    assert_eq!(t["bin_a"], "tool a\n");
    assert_eq!(t["bin_b"], "tool b\n");
    assert_eq!(
        t["init_scripts"], "a.service\nb.service\n",
        "same-named directories merge"
    );
    assert!(
        t["source_repository"].starts_with("a git /tmp/a "),
        "{}",
        t["source_repository"]
    );
    assert_eq!(t["top_level_last_wins"], "{\"from\": \"b\"}\n");
    assert_eq!(t["tests_dir"], "absent\n");
    assert_eq!(file("tree-host"), "tool a\n");
}

#[test]
fn the_same_file_in_two_element_trees_is_an_error_naming_both() {
    let (s, tmp) = scratch_with_tmp("dib-tree-clash");
    s.flavour("clash-a", &[README, ("bin/same-tool", "#!/bin/sh\n", true)]);
    let flavours = s.flavour("clash-b", &[README, ("bin/same-tool", "#!/bin/sh\n", true)]);
    let out = s.join("img");
    let mut args = vec!["-t", "tar", "-o", out.to_str().unwrap()];
    args.extend(IMAGE_FLAVOURS);
    args.extend(["clash-a", "clash-b"]);
    let o = kiln("disk-image-create", &args)
        .env("ELEMENTS_PATH", test_flavours_path(&[&flavours]))
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    let text = output_text(&o);
    assert!(!o.status.success(), "{text}");
    for f in [
        "clash-a/bin/same-tool",
        "clash-b/bin/same-tool",
        "two flavours ship bin/same-tool",
    ] {
        assert!(text.contains(f), "the error should name {f}:\n{text}");
    }
    assert!(!text.contains("panicked"), "{text}");
}

#[test]
fn root_d_hooks_mknod_mount_and_chroot_as_under_real_root() {
    let probe = values("root_probe");
    let get = |k: &str| probe.get(k).map(String::as_str).unwrap_or("");
    // The standard node works while the hook runs (a bind of the host's)...
    assert_eq!(get("mknod_full"), "char 000000", "{probe:?}");
    // ...and any other node gets the kernel's answer.
    assert_eq!(get("other_node"), "refused", "{probe:?}");
    assert_eq!(get("sysfs"), "yes ro=yes", "{probe:?}");
    assert_eq!(get("sysfs_unmounted"), "yes", "{probe:?}");
    assert_eq!(get("devtmpfs"), "yes", "{probe:?}");
    assert_eq!(get("chroot"), "1", "{probe:?}");
    // The empty stand-in file mknod left is gone from the image.
    let b = contract_build();
    assert!(
        b.dev_full.as_deref().is_none_or(|l| !l.starts_with('-')),
        "a stand-in /dev/full reached the image: {:?}",
        b.dev_full
    );
}
