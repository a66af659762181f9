use super::*;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};
use std::io::{Read, Seek};
use std::path::Path;

const TIOCSTI: u64 = 0x5412;
const TIOCLINUX: u64 = 0x541C;

fn default_profile() -> Profile {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("seccomp/default.json");
    Profile::from_file(&path).expect("seccomp/default.json parses")
}

fn caps(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// libseccomp's output for `filter`: BPF, or its readable pseudo filter code.
fn export(filter: &Filter, pfc: bool) -> Vec<u8> {
    let mut f = tempfile::tempfile().unwrap();
    if pfc {
        filter.0.export_pfc(&f).unwrap();
    } else {
        filter.0.export_bpf(&f).unwrap();
    }
    f.rewind().unwrap();
    let mut v = Vec::new();
    f.read_to_end(&mut v).unwrap();
    v
}

/// Number of BPF instructions (struct sock_filter is 8 bytes).
fn bpf_len(filter: &Filter) -> usize {
    export(filter, false).len() / 8
}

/// Runs `probe` in a forked child, under `filter` if given, and returns the
/// child's exit code: 0 if the probe's syscall succeeded, else its errno.
fn run(filter: Option<&Filter>, probe: impl FnOnce() -> libc::c_long) -> i32 {
    // SAFETY: the child only makes syscalls, loads the filter and _exits.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            let code = (|| {
                if let Some(filter) = filter {
                    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
                        return 250;
                    }
                    if filter.load().is_err() {
                        return 251;
                    }
                }
                if probe() == -1 {
                    std::io::Error::last_os_error()
                        .raw_os_error()
                        .unwrap_or(252)
                } else {
                    0
                }
            })();
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => match waitpid(child, None).expect("waitpid") {
            WaitStatus::Exited(_, code) => code,
            other => panic!("probe child ended with {other:?}"),
        },
    }
}

/// ioctl(cmd) on a fresh pipe: not a terminal, so TIOCSTI would fail with ENOTTY
/// even unfiltered, and nothing can be injected anywhere.
fn ioctl_on_pipe(cmd: u64) -> libc::c_long {
    let mut fds = [0; 2];
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return -1;
    }
    let mut arg = 0u32;
    unsafe { libc::syscall(libc::SYS_ioctl, fds[0], cmd, &mut arg as *mut u32) }
}

#[test]
fn default_profile_parses_and_compiles_with_and_without_sys_admin() {
    let profile = default_profile();
    let hooks = profile
        .compile(&caps(&["CAP_CHOWN", "CAP_SYS_CHROOT"]))
        .expect("compile");
    let host = profile
        .compile(&caps(&["CAP_SYS_ADMIN", "sys_chroot"]))
        .expect("compile");
    let (h, s) = (bpf_len(&hooks), bpf_len(&host));
    assert!(h > 100 && s > 100, "{h} {s}");
    assert_ne!(h, s, "CAP_SYS_ADMIN must change the filter");
    assert!(Profile::builtin().is_ok());
}

#[cfg(target_arch = "x86_64")]
#[test]
fn only_this_machines_abis_are_in_the_filter() {
    let filter = default_profile().compile(&[]).unwrap();
    let pfc = String::from_utf8_lossy(&export(&filter, true)).into_owned();
    assert!(pfc.contains("filter for arch x86_64"), "{pfc}");
    assert!(pfc.contains("filter for arch x86 "), "{pfc}");
    assert!(!pfc.contains("aarch64"), "{pfc}");
}

#[test]
fn malformed_json_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.json");
    let text = "{\n  \"defaultAction\": \"SCMP_ACT_ERRNO\",\n  \"syscalls\": [\n    {\"names\": [\"read\"] \"action\": \"SCMP_ACT_ALLOW\"}\n  ]\n}\n";
    std::fs::write(&path, text).unwrap();
    let err = Profile::from_file(&path).unwrap_err();
    assert!(matches!(err, SeccompError::Json { line: 4, .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("broken.json") && msg.contains("line 4"),
        "{msg}"
    );

    let missing = Profile::from_file(&dir.path().join("nope.json")).unwrap_err();
    assert!(missing.to_string().contains("nope.json"), "{missing}");
}

#[test]
fn wrong_shape_names_line_and_what_was_expected() {
    let json = "{\"defaultAction\": \"SCMP_ACT_ERRNO\",\n \"syscalls\": [\n  {\"names\": \"read\", \"action\": \"SCMP_ACT_ALLOW\"}]}";
    let err = Profile::from_json(json, "p.json").unwrap_err();
    assert!(matches!(err, SeccompError::Json { line: 3, .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "seccomp profile p.json: line 3, column 18: invalid type: string \"read\", \
             expected a sequence"
    );
    // serde would read an array as the fields in order; a profile is an object.
    for json in [
        r#"["SCMP_ACT_ALLOW"]"#,
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [[["read"], null, "SCMP_ACT_ALLOW"]]}"#,
    ] {
        let msg = Profile::from_json(json, "p.json").unwrap_err().to_string();
        assert!(
            msg.contains("invalid type: sequence, expected a JSON object"),
            "{msg}"
        );
    }
    // An OCI config.json rather than its linux.seccomp object.
    let msg = Profile::from_json(r#"{"ociVersion": "1.0.2", "linux": {}}"#, "p.json")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("top level: \"defaultAction\" is missing"),
        "{msg}"
    );
    let json = r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"],
            "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "op": "SCMP_CMP_EQ"}]}]}"#;
    let msg = Profile::from_json(json, "p.json").unwrap_err().to_string();
    assert_eq!(
        msg,
        "seccomp profile p.json: syscalls[0].args[0]: \"value\" is missing"
    );
    let json = r#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 5000}"#;
    let msg = Profile::from_json(json, "p.json").unwrap_err().to_string();
    assert!(
        msg.contains("defaultErrnoRet: 5000 is not an errno"),
        "{msg}"
    );
}

#[test]
fn unknown_action_or_operator_names_the_entry() {
    let json = r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["write"], "action": "SCMP_ACT_BOGUS"}]}"#;
    let msg = Profile::from_json(json, "p.json").unwrap_err().to_string();
    assert!(
        msg.contains("p.json") && msg.contains("syscalls[1]"),
        "{msg}"
    );
    assert!(msg.contains("SCMP_ACT_BOGUS"), "{msg}");

    let json = r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"],
            "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_SOMETIMES"}]}]}"#;
    let msg = Profile::from_json(json, "p.json").unwrap_err().to_string();
    assert!(
        msg.contains("syscalls[0].args[0].op") && msg.contains("SCMP_CMP_SOMETIMES"),
        "{msg}"
    );

    let json = r#"{"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_PDP11"]}"#;
    let msg = Profile::from_json(json, "p.json").unwrap_err().to_string();
    assert!(
        msg.contains("architectures[0]") && msg.contains("PDP11"),
        "{msg}"
    );
}

#[test]
fn docker_style_profiles_compile() {
    // Unknown syscall names, a foreign-arch name, a rule equal to the default
    // action, two comparisons of one argument, null args, archMap and flags.
    let json = r#"{
            "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
            "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
                        {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}],
            "flags": ["SECCOMP_FILTER_FLAG_SPEC_ALLOW", "SECCOMP_FILTER_FLAG_SOMETHING_NEW"],
            "syscalls": [
                {"names": ["no_such_syscall", "getpid", "socketcall", "arm_fadvise64_64"], "action": "SCMP_ACT_ALLOW", "args": null},
                {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
                {"name": "personality", "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}, {"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
                {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"], "minKernel": "4.8"}},
                {"names": ["kill"], "action": "SCMP_ACT_LOG", "excludes": {"arches": ["s390x"]}}
            ]}"#;
    let profile = Profile::from_json(json, "docker.json").expect("parse");
    profile.compile(&[]).expect("compile");
    profile.compile(&caps(&["CAP_SYS_ADMIN"])).expect("compile");
}

#[test]
#[allow(clippy::unnecessary_cast)] // ioctl numbers are u32 on 32-bit targets
fn default_filter_denies_and_allows() {
    let profile = default_profile();
    let filter = profile
        .compile(&caps(&["CAP_CHOWN", "CAP_SYS_CHROOT", "CAP_SETUID"]))
        .unwrap();
    let f = Some(&filter);
    let sys = |nr: libc::c_long, a: [u64; 4]| {
        move || unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3]) }
    };

    // KEYCTL_GET_KEYRING_ID of KEY_SPEC_SESSION_KEYRING, which works unfiltered.
    assert_eq!(
        run(f, sys(libc::SYS_keyctl, [0, (-3i64) as u64, 0, 0])),
        libc::EPERM
    );
    assert_eq!(run(f, sys(libc::SYS_add_key, [0; 4])), libc::EPERM);
    assert_eq!(run(f, sys(libc::SYS_init_module, [0; 4])), libc::EPERM);
    assert_eq!(
        run(f, sys(libc::SYS_finit_module, [u64::MAX, 0, 0, 0])),
        libc::EPERM
    );
    assert_eq!(run(f, sys(libc::SYS_kexec_load, [0; 4])), libc::EPERM);
    // A bad magic gives EINVAL unfiltered; the filter must answer first.
    assert_eq!(run(f, sys(libc::SYS_reboot, [0; 4])), libc::EPERM);
    assert_eq!(run(f, sys(libc::SYS_ptrace, [0; 4])), libc::EPERM);
    assert_eq!(
        run(f, sys(libc::SYS_open_by_handle_at, [0; 4])),
        libc::EPERM
    );
    assert_eq!(run(f, sys(libc::SYS_clock_settime, [0; 4])), libc::EPERM);

    // Unlisted syscalls give ENOSYS (EBADF / EINVAL unfiltered).
    assert_eq!(
        run(None, sys(libc::SYS_pidfd_getfd, [u64::MAX, 0, 0, 0])),
        libc::EBADF
    );
    assert_eq!(
        run(f, sys(libc::SYS_pidfd_getfd, [u64::MAX, 0, 0, 0])),
        libc::ENOSYS
    );
    assert_eq!(run(f, sys(libc::SYS_clone3, [0; 4])), libc::ENOSYS);

    // TIOCSTI/TIOCLINUX compared on 32 bits: high bits, which the kernel drops,
    // do not get past the filter.
    let high = 1u64 << 32;
    assert_eq!(run(None, || ioctl_on_pipe(TIOCSTI | high)), libc::ENOTTY);
    assert_eq!(run(f, || ioctl_on_pipe(TIOCSTI)), libc::EPERM);
    assert_eq!(run(f, || ioctl_on_pipe(TIOCSTI | high)), libc::EPERM);
    assert_eq!(run(f, || ioctl_on_pipe(TIOCLINUX)), libc::EPERM);
    assert_eq!(run(f, || ioctl_on_pipe(TIOCLINUX | high)), libc::EPERM);
    // Every other ioctl still works.
    let fionread = libc::FIONREAD as u64;
    assert_eq!(run(f, || ioctl_on_pipe(fionread)), 0);
    assert_eq!(
        run(f, || ioctl_on_pipe(libc::TCGETS as u64)),
        run(None, || ioctl_on_pipe(libc::TCGETS as u64))
    );

    assert_eq!(run(f, || unsafe { libc::getpid() } as libc::c_long), 0);
    // fork goes through clone without namespace flags.
    let fork_and_wait = || unsafe {
        match libc::fork() {
            0 => libc::_exit(0),
            -1 => -1,
            pid => libc::waitpid(pid, std::ptr::null_mut(), 0) as libc::c_long,
        }
    };
    assert_eq!(run(f, fork_and_wait), 0);
    // New namespaces need CAP_SYS_ADMIN; unsharing plain process state does not.
    let unshare = |flags: libc::c_int| move || unsafe { libc::unshare(flags) } as libc::c_long;
    assert_eq!(run(f, unshare(libc::CLONE_NEWUSER)), libc::EPERM);
    assert_eq!(run(f, unshare(libc::CLONE_FILES)), 0);
    let persona = |p: libc::c_ulong| move || unsafe { libc::personality(p) } as libc::c_long;
    assert_eq!(run(f, persona(0xffff_ffff)), 0);
    assert_eq!(run(f, persona(0x0040000)), libc::EPERM); // ADDR_NO_RANDOMIZE

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("written");
    let write = || match std::fs::write(&path, b"kiln") {
        Ok(()) => 0,
        Err(_) => -1,
    };
    assert_eq!(run(f, write), 0);
    assert_eq!(std::fs::read(&path).unwrap(), b"kiln");
}

#[test]
fn keeping_sys_admin_allows_namespaces() {
    let filter = default_profile()
        .compile(&caps(&["CAP_SYS_ADMIN", "CAP_SYS_CHROOT"]))
        .unwrap();
    let newuser = || unsafe { libc::unshare(libc::CLONE_NEWUSER) } as libc::c_long;
    // Whatever the kernel itself says (it may forbid user namespaces), the filter adds nothing.
    assert_eq!(run(Some(&filter), newuser), run(None, newuser));
    assert_eq!(
        run(Some(&filter), || ioctl_on_pipe(TIOCSTI | (1 << 32))),
        libc::EPERM
    );
}
