//! diskimage-builder's core contract, as its own elements rely on it: what a hook
//! inherits (and must not inherit), the variables and functions it sees, `sudo` on
//! the host side, and how element trees merge. One traced build (`-x -x`, tar
//! output) with DIB-like elements written here serves every test.

mod common;

use common::*;
use std::collections::BTreeMap;
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

struct ContractBuild {
    _scratch: Scratch,
    /// Files of /root/kiln-dib in the image, by name.
    files: BTreeMap<String, String>,
    stderr: String,
}

fn contract_build() -> &'static ContractBuild {
    static B: OnceLock<ContractBuild> = OnceLock::new();
    B.get_or_init(|| {
        let (s, tmp) = scratch_with_tmp("dib-contract");
        s.flavour("dib-trace", &[README, ("install.d/50-trace", TRACE_HOOK, true)]);
        // As enable-serial-console ships it: mode 0644, no shebang; it must not run.
        let flavours = s.flavour("dib-serial", &[README, ("cleanup.d/99-fix-grub", "exit 1\n", false)]);
        let out = s.join("img");
        let mut args = vec!["-x", "-x", "-t", "tar", "-o", out.to_str().unwrap()];
        args.extend(IMAGE_FLAVOURS);
        args.extend(["dib-trace", "dib-serial"]);
        let o = run_ok(
            kiln("disk-image-create", &args)
                .env("ELEMENTS_PATH", test_flavours_path(&[&flavours]))
                .env("TMPDIR", &tmp),
        );
        let tar = s.join("img.tar");
        let files = read_dir_from_tar(&tar, "root/kiln-dib");
        ContractBuild { stderr: String::from_utf8_lossy(&o.stderr).into_owned(), _scratch: s, files }
    })
}

fn read_dir_from_tar(tar: &std::path::Path, dir: &str) -> BTreeMap<String, String> {
    let x = tempfile::tempdir().unwrap();
    let st = Command::new("tar").arg("-xf").arg(tar).arg("-C").arg(x.path()).arg(format!("./{dir}")).status().unwrap();
    assert!(st.success(), "the tarball has no /{dir}");
    let mut m = BTreeMap::new();
    for e in std::fs::read_dir(x.path().join(dir)).unwrap().flatten() {
        m.insert(e.file_name().to_string_lossy().into_owned(), std::fs::read_to_string(e.path()).unwrap());
    }
    m
}

fn file(name: &str) -> &'static str {
    let b = contract_build();
    b.files.get(name).unwrap_or_else(|| panic!("no /root/kiln-dib/{name}; have {:?}", b.files.keys().collect::<Vec<_>>()))
}

#[test]
fn repeated_x_counts_into_dib_debug_trace() {
    assert_eq!(file("debug_trace").trim(), "2");
}

#[test]
fn tracing_leaks_no_shell_options_into_a_hooks_children() {
    let opts = file("child_options");
    let shellopts = opts.lines().find_map(|l| l.strip_prefix("SHELLOPTS=")).unwrap();
    for o in ["errexit", "nounset", "xtrace", "pipefail"] {
        assert!(!shellopts.split(':').any(|x| x == o), "a bash child inherited {o}: {shellopts}");
        let line = opts.lines().find(|l| l.split_whitespace().next() == Some(o)).unwrap_or_else(|| panic!("set -o lists no {o}:\n{opts}"));
        assert!(line.ends_with("off"), "{line}");
    }
    // The script that broke under the old leak works.
    assert!(file("ldd").contains("libc.so"), "{}", file("ldd"));
}

#[test]
fn hooks_still_trace_themselves() {
    let e = &contract_build().stderr;
    assert!(e.contains("+ ldd /bin/true"), "the hook's own set -x left no trace:\n{e}");
}

#[test]
fn non_executable_hook_is_skipped_with_a_warning_at_run_time() {
    let e = &contract_build().stderr;
    assert!(e.contains("warning: cleanup.d/99-fix-grub (flavour dib-serial) skipped: not executable"), "{e}");
}
