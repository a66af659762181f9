//! The hooks' seccomp filter (docs/architecture.md §4).
//!
//! Profiles are OCI runtime-spec `linux.seccomp` objects, with Docker's
//! `includes`/`excludes` and `archMap` extensions, so users can bring container
//! profiles. They are compiled by libseccomp, as runc, crun and youki do; kiln
//! never writes BPF itself. The sandbox loads the filter last before each hook's
//! `exec`, after setting `PR_SET_NO_NEW_PRIVS` and cutting the bounding set.

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::io::{Read, Seek};
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use serde_json::{Map, Value};

/// `seccomp/default.json`, built in: the filter always matches the binary that
/// was tested with it. `make install` puts the file in PREFIX/share/kiln/seccomp
/// as the starting point for `--seccomp-profile`; kiln never reads that copy.
pub const DEFAULT_PROFILE: &str = include_str!("../../seccomp/default.json");

#[derive(Debug)]
pub enum SeccompError {
    /// The profile file could not be read.
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The profile is not JSON.
    Json {
        origin: String,
        line: usize,
        column: usize,
        source: serde_json::Error,
    },
    /// The profile is JSON but not a profile; `at` is a path such as `syscalls[3].action`.
    Invalid {
        origin: String,
        at: String,
        message: String,
    },
    /// libseccomp refused part of the profile.
    Compile {
        origin: String,
        at: String,
        source: libseccomp::error::SeccompError,
    },
    /// The kernel refused the filter.
    Load {
        source: libseccomp::error::SeccompError,
    },
    /// The compiled filter could not be written out.
    Export { source: std::io::Error },
}

impl fmt::Display for SeccompError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read { path, source } => {
                write!(
                    f,
                    "cannot read seccomp profile {}: {source}",
                    path.display()
                )
            }
            Self::Json {
                origin,
                line,
                column,
                source,
            } => {
                // serde_json appends the position itself; say it once, our way.
                let text = source.to_string();
                let what = text.trim_end_matches(&format!(" at line {line} column {column}"));
                write!(
                    f,
                    "seccomp profile {origin}: line {line}, column {column}: invalid JSON: {what}"
                )
            }
            Self::Invalid {
                origin,
                at,
                message,
            } => {
                write!(f, "seccomp profile {origin}: {at}: {message}")
            }
            Self::Compile { origin, at, source } => {
                write!(
                    f,
                    "seccomp profile {origin}: {at}: libseccomp refused it: {source}"
                )
            }
            Self::Load { source } => write!(
                f,
                "the kernel refused the seccomp filter ({source}); the thread must have \
                 PR_SET_NO_NEW_PRIVS set or hold CAP_SYS_ADMIN"
            ),
            Self::Export { source } => write!(f, "cannot export the seccomp filter: {source}"),
        }
    }
}

impl std::error::Error for SeccompError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Read { source, .. } | Self::Export { source } => Some(source),
            Self::Json { source, .. } => Some(source),
            Self::Compile { source, .. } | Self::Load { source } => Some(source),
            Self::Invalid { .. } => None,
        }
    }
}

/// A parsed and checked profile; every name and operator is known, syscall names
/// are resolved only by [`Profile::compile`].
#[derive(Debug, Clone)]
pub struct Profile {
    origin: String,
    default_action: ScmpAction,
    arches: Vec<ScmpArch>,
    flags: Vec<String>,
    entries: Vec<Entry>,
}

#[derive(Debug, Clone)]
struct Entry {
    at: String,
    names: Vec<String>,
    action: ScmpAction,
    args: Vec<(u32, ScmpArgCompare)>,
    includes: Conditions,
    excludes: Conditions,
}

/// Docker's `includes`/`excludes`; `minKernel` is ignored (a rule for a syscall the
/// kernel lacks is harmless).
#[derive(Debug, Clone, Default)]
struct Conditions {
    caps: Vec<String>,
    arches: Vec<String>,
}

impl Profile {
    pub fn from_file(path: &Path) -> Result<Profile, SeccompError> {
        let json = std::fs::read_to_string(path).map_err(|source| SeccompError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_str(&json, &path.display().to_string())
    }

    /// `origin` names the profile in error messages (a path, or "built-in").
    #[allow(clippy::should_implement_trait)]
    pub fn from_str(json: &str, origin: &str) -> Result<Profile, SeccompError> {
        let value: Value = serde_json::from_str(json).map_err(|source| SeccompError::Json {
            origin: origin.to_string(),
            line: source.line(),
            column: source.column(),
            source,
        })?;
        parse_profile(&value, origin).map_err(|(at, message)| SeccompError::Invalid {
            origin: origin.to_string(),
            at,
            message,
        })
    }

    /// The profile shipped as `seccomp/default.json`.
    pub fn builtin() -> Result<Profile, SeccompError> {
        Self::from_str(DEFAULT_PROFILE, "built-in seccomp/default.json")
    }

    /// Build the libseccomp filter for a process that will keep `kept_caps`
    /// (names like "CAP_SYS_ADMIN"): entries whose includes.caps are not all kept,
    /// or whose excludes.caps intersect them, are skipped.
    pub fn compile(&self, kept_caps: &[String]) -> Result<Filter, SeccompError> {
        let mut ctx =
            ScmpFilterContext::new(self.default_action).map_err(self.refused("defaultAction"))?;
        // kiln sets PR_SET_NO_NEW_PRIVS itself, at a point of its choosing; libseccomp
        // must not set it as a side effect of loading.
        ctx.set_ctl_nnp(false)
            .map_err(self.refused("no_new_privs attribute"))?;
        // Speed (a binary tree instead of a list of ~350 compares) and real kernel
        // errnos in messages; an older libseccomp without them enforces the same policy.
        let _ = ctx.set_ctl_optimize(2);
        let _ = ctx.set_api_sysrawrc(true);
        for &arch in self.arches.iter().filter(|&&a| runs_here(a)) {
            ctx.add_arch(arch).map_err(self.refused("architectures"))?;
        }
        for flag in &self.flags {
            // These change logging, thread sync and speculation mitigations, not what
            // is allowed; kiln loads in a single-threaded child, so a kernel lacking
            // TSYNC loses nothing either. Unknown flags are ignored likewise.
            let _ = match flag.as_str() {
                "SECCOMP_FILTER_FLAG_TSYNC" => ctx.set_ctl_tsync(true),
                "SECCOMP_FILTER_FLAG_LOG" => ctx.set_ctl_log(true),
                "SECCOMP_FILTER_FLAG_SPEC_ALLOW" => ctx.set_ctl_ssb(true),
                _ => continue,
            };
        }

        let kept: HashSet<String> = kept_caps.iter().map(|c| cap_name(c)).collect();
        for entry in self.entries.iter().filter(|e| e.applies(&kept)) {
            // libseccomp refuses rules that repeat the default action; they would
            // change nothing (runc skips them too).
            if entry.action == self.default_action {
                continue;
            }
            let conds: Vec<ScmpArgCompare> = entry.args.iter().map(|&(_, c)| c).collect();
            let repeated = (1..entry.args.len())
                .any(|i| entry.args[..i].iter().any(|a| a.0 == entry.args[i].0));
            // libseccomp cannot AND two comparisons of the same argument. Like runc,
            // such an entry becomes one rule per comparison, i.e. their OR.
            let rules: Vec<&[ScmpArgCompare]> = if repeated {
                conds.chunks(1).collect()
            } else {
                vec![&conds[..]]
            };
            for name in &entry.names {
                // Profiles list syscalls that exist only on some architectures or
                // kernels: a name libseccomp cannot resolve is skipped, as OCI runtimes
                // do. Names absent from one of the filter's arches resolve to pseudo
                // numbers that libseccomp leaves out for that arch.
                let Ok(syscall) = ScmpSyscall::from_name(name) else {
                    continue;
                };
                for rule in &rules {
                    ctx.add_rule_conditional(entry.action, syscall, rule)
                        .map_err(self.refused(&format!("{} ({name})", entry.at)))?;
                }
            }
        }
        Ok(Filter(ctx))
    }

    fn refused<'a>(
        &'a self,
        at: &'a str,
    ) -> impl FnOnce(libseccomp::error::SeccompError) -> SeccompError + 'a {
        move |source| SeccompError::Compile {
            origin: self.origin.clone(),
            at: at.to_string(),
            source,
        }
    }
}

impl Entry {
    fn applies(&self, kept: &HashSet<String>) -> bool {
        self.includes.caps.iter().all(|c| kept.contains(c))
            && !self.excludes.caps.iter().any(|c| kept.contains(c))
            && (self.includes.arches.is_empty()
                || self.includes.arches.iter().any(|a| is_native(a)))
            && !self.excludes.arches.iter().any(|a| is_native(a))
    }
}

/// A compiled filter, ready to load.
#[derive(Debug)]
pub struct Filter(libseccomp::ScmpFilterContext);

impl Filter {
    /// Load into the kernel for the calling thread. The thread must already have
    /// `PR_SET_NO_NEW_PRIVS` (or CAP_SYS_ADMIN). It allocates, which is fine in
    /// the forked child that calls it just before `exec`.
    pub fn load(&self) -> Result<(), SeccompError> {
        self.0
            .load()
            .map_err(|source| SeccompError::Load { source })
    }

    /// Number of BPF instructions in the filter.
    pub fn export_bpf_len(&self) -> Result<usize, SeccompError> {
        // struct sock_filter is 8 bytes.
        Ok(self.export(false)?.len() / 8)
    }

    /// libseccomp's readable pseudo filter code, for debugging and tests.
    pub fn export_pfc(&self) -> Result<String, SeccompError> {
        Ok(String::from_utf8_lossy(&self.export(true)?).into_owned())
    }

    fn export(&self, pfc: bool) -> Result<Vec<u8>, SeccompError> {
        let err = |source| SeccompError::Export { source };
        // A memfd, because libseccomp writes to a descriptor and a pipe could fill up.
        let fd = unsafe { libc::memfd_create(c"kiln-seccomp".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(err(std::io::Error::last_os_error()));
        }
        // SAFETY: fd is a fresh descriptor that nothing else owns.
        let mut file = unsafe { File::from_raw_fd(fd) };
        let written = if pfc {
            self.0.export_pfc(&file)
        } else {
            self.0.export_bpf(&file)
        };
        written.map_err(|e| err(std::io::Error::other(e)))?;
        let mut out = Vec::new();
        file.rewind()
            .and_then(|_| file.read_to_end(&mut out))
            .map_err(err)?;
        Ok(out)
    }
}

/// The ABIs this kernel can run. Other architectures a profile names are ignored,
/// so one profile serves x86_64 and aarch64 hosts without bloating the filter;
/// the kernel never reports a foreign arch, so leaving it out changes nothing.
fn runs_here(arch: ScmpArch) -> bool {
    if cfg!(target_arch = "x86_64") {
        matches!(
            arch,
            ScmpArch::X8664 | ScmpArch::X86 | ScmpArch::X32 | ScmpArch::Native
        )
    } else if cfg!(target_arch = "aarch64") {
        matches!(arch, ScmpArch::Aarch64 | ScmpArch::Arm | ScmpArch::Native)
    } else {
        true
    }
}

/// Docker names arches in includes/excludes by Go's GOARCH; libseccomp and uname
/// spellings are accepted as well.
fn is_native(name: &str) -> bool {
    let names: &[&str] = if cfg!(target_arch = "x86_64") {
        &["amd64", "x86_64", "SCMP_ARCH_X86_64"]
    } else if cfg!(target_arch = "aarch64") {
        &["arm64", "aarch64", "SCMP_ARCH_AARCH64"]
    } else {
        &[std::env::consts::ARCH]
    };
    names.contains(&name)
}

fn cap_name(name: &str) -> String {
    let upper = name.trim().to_ascii_uppercase();
    if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    }
}

// ---- parsing: errors are (where, what), turned into SeccompError::Invalid ----

type Bad = (String, String);

fn bad<T>(at: &str, message: impl Into<String>) -> Result<T, Bad> {
    Err((at.to_string(), message.into()))
}

/// Absent and `null` are the same: Docker writes `"args": null`.
fn field<'v>(obj: &'v Map<String, Value>, key: &str) -> Option<&'v Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn object<'v>(v: &'v Value, at: &str) -> Result<&'v Map<String, Value>, Bad> {
    v.as_object()
        .map_or_else(|| bad(at, "expected an object"), Ok)
}

fn string<'v>(v: &'v Value, at: &str) -> Result<&'v str, Bad> {
    v.as_str().map_or_else(|| bad(at, "expected a string"), Ok)
}

fn uint(v: &Value, at: &str) -> Result<u64, Bad> {
    v.as_u64().map_or_else(
        || bad(at, format!("expected an unsigned integer, found {v}")),
        Ok,
    )
}

fn strings(v: Option<&Value>, at: &str) -> Result<Vec<String>, Bad> {
    let Some(v) = v else { return Ok(Vec::new()) };
    let items = v
        .as_array()
        .map_or_else(|| bad(at, "expected an array of strings"), Ok)?;
    items
        .iter()
        .enumerate()
        .map(|(i, s)| string(s, &format!("{at}[{i}]")).map(str::to_string))
        .collect()
}

fn array<'v>(v: Option<&'v Value>, at: &str) -> Result<&'v [Value], Bad> {
    match v {
        None => Ok(&[]),
        Some(v) => v
            .as_array()
            .map_or_else(|| bad(at, "expected an array"), |a| Ok(a.as_slice())),
    }
}

fn parse_profile(v: &Value, origin: &str) -> Result<Profile, Bad> {
    let top = object(v, "top level")?;
    let Some(action) = field(top, "defaultAction") else {
        return bad(
            "top level",
            "\"defaultAction\" is missing (expected an OCI linux.seccomp object)",
        );
    };
    let errno = field(top, "defaultErrnoRet")
        .map(|v| errno_ret(v, "defaultErrnoRet"))
        .transpose()?;
    let default_action = parse_action(string(action, "defaultAction")?, errno, "defaultAction")?;

    let mut arches = Vec::new();
    for (i, name) in strings(field(top, "architectures"), "architectures")?
        .iter()
        .enumerate()
    {
        arches.push(parse_arch(name, &format!("architectures[{i}]"))?);
    }
    // Docker's archMap: each main arch with its compat arches; runs_here() keeps ours.
    for (i, m) in array(field(top, "archMap"), "archMap")?.iter().enumerate() {
        let at = format!("archMap[{i}]");
        let m = object(m, &at)?;
        let main =
            field(m, "architecture").map_or_else(|| bad(&at, "\"architecture\" is missing"), Ok)?;
        arches.push(parse_arch(
            string(main, &at)?,
            &format!("{at}.architecture"),
        )?);
        let subs = strings(
            field(m, "subArchitectures"),
            &format!("{at}.subArchitectures"),
        )?;
        for (j, name) in subs.iter().enumerate() {
            arches.push(parse_arch(name, &format!("{at}.subArchitectures[{j}]"))?);
        }
    }

    let flags = strings(field(top, "flags"), "flags")?;
    let entries = array(field(top, "syscalls"), "syscalls")?
        .iter()
        .enumerate()
        .map(|(i, e)| parse_entry(e, &format!("syscalls[{i}]")))
        .collect::<Result<_, _>>()?;
    Ok(Profile {
        origin: origin.to_string(),
        default_action,
        arches,
        flags,
        entries,
    })
}

fn parse_entry(v: &Value, at: &str) -> Result<Entry, Bad> {
    let e = object(v, at)?;
    let names = match (field(e, "names"), field(e, "name")) {
        (Some(names), _) => strings(Some(names), &format!("{at}.names"))?,
        // The single "name" of Docker's older format.
        (None, Some(name)) => vec![string(name, &format!("{at}.name"))?.to_string()],
        (None, None) => return bad(at, "\"names\" is missing"),
    };
    let action_at = format!("{at}.action");
    let Some(action) = field(e, "action") else {
        return bad(at, "\"action\" is missing");
    };
    let errno = field(e, "errnoRet")
        .map(|v| errno_ret(v, &format!("{at}.errnoRet")))
        .transpose()?;
    let action = parse_action(string(action, &action_at)?, errno, &action_at)?;
    let args = array(field(e, "args"), &format!("{at}.args"))?
        .iter()
        .enumerate()
        .map(|(i, a)| parse_arg(a, &format!("{at}.args[{i}]")))
        .collect::<Result<_, _>>()?;
    Ok(Entry {
        at: at.to_string(),
        names,
        action,
        args,
        includes: parse_conditions(field(e, "includes"), &format!("{at}.includes"))?,
        excludes: parse_conditions(field(e, "excludes"), &format!("{at}.excludes"))?,
    })
}

fn parse_conditions(v: Option<&Value>, at: &str) -> Result<Conditions, Bad> {
    let Some(v) = v else {
        return Ok(Conditions::default());
    };
    let c = object(v, at)?;
    Ok(Conditions {
        caps: strings(field(c, "caps"), &format!("{at}.caps"))?
            .iter()
            .map(|c| cap_name(c))
            .collect(),
        arches: strings(field(c, "arches"), &format!("{at}.arches"))?,
    })
}

/// The kernel hands the value back as -errno, so it must be one libc sees as an error.
fn errno_ret(v: &Value, at: &str) -> Result<i32, Bad> {
    match uint(v, at)? {
        n @ 0..=4095 => Ok(n as i32),
        n => bad(at, format!("{n} is not an errno (0..=4095)")),
    }
}

fn parse_action(name: &str, errno: Option<i32>, at: &str) -> Result<ScmpAction, Bad> {
    // OCI: errnoRet defaults to EPERM.
    let errno = errno.unwrap_or(libc::EPERM);
    Ok(match name {
        "SCMP_ACT_ALLOW" => ScmpAction::Allow,
        "SCMP_ACT_ERRNO" => ScmpAction::Errno(errno),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => ScmpAction::KillThread,
        "SCMP_ACT_KILL_PROCESS" => ScmpAction::KillProcess,
        "SCMP_ACT_TRAP" => ScmpAction::Trap,
        "SCMP_ACT_LOG" => ScmpAction::Log,
        "SCMP_ACT_TRACE" => ScmpAction::Trace(errno as u16),
        "SCMP_ACT_NOTIFY" => {
            return bad(
                at,
                "SCMP_ACT_NOTIFY needs a seccomp agent (listenerPath); kiln runs none",
            )
        }
        other => return bad(at, format!("unknown action {other:?}")),
    })
}

fn parse_arch(name: &str, at: &str) -> Result<ScmpArch, Bad> {
    name.parse()
        .map_or_else(|_| bad(at, format!("unknown architecture {name:?}")), Ok)
}

fn parse_arg(v: &Value, at: &str) -> Result<(u32, ScmpArgCompare), Bad> {
    let a = object(v, at)?;
    let get =
        |key: &str| field(a, key).map_or_else(|| bad(at, format!("\"{key}\" is missing")), Ok);
    let index = uint(get("index")?, &format!("{at}.index"))?;
    if index > 5 {
        return bad(
            &format!("{at}.index"),
            format!("argument index {index} is not 0..=5"),
        );
    }
    let index = index as u32;
    let value = uint(get("value")?, &format!("{at}.value"))?;
    let value_two = field(a, "valueTwo")
        .map(|v| uint(v, &format!("{at}.valueTwo")))
        .transpose()?;
    let op_at = format!("{at}.op");
    let (op, datum) = match string(get("op")?, &op_at)? {
        "SCMP_CMP_NE" => (ScmpCompareOp::NotEqual, value),
        "SCMP_CMP_LT" => (ScmpCompareOp::Less, value),
        "SCMP_CMP_LE" => (ScmpCompareOp::LessOrEqual, value),
        "SCMP_CMP_EQ" => (ScmpCompareOp::Equal, value),
        "SCMP_CMP_GE" => (ScmpCompareOp::GreaterEqual, value),
        "SCMP_CMP_GT" => (ScmpCompareOp::Greater, value),
        // As in runc and libseccomp: value is the mask, valueTwo the expected result.
        "SCMP_CMP_MASKED_EQ" => (ScmpCompareOp::MaskedEqual(value), value_two.unwrap_or(0)),
        other => return bad(&op_at, format!("unknown operator {other:?}")),
    };
    Ok((index, ScmpArgCompare::new(index, op, datum)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, ForkResult};

    const TIOCSTI: u64 = 0x5412;
    const TIOCLINUX: u64 = 0x541C;

    fn default_profile() -> Profile {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("seccomp/default.json");
        Profile::from_file(&path).expect("seccomp/default.json parses")
    }

    fn caps(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
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
        let (h, s) = (
            hooks.export_bpf_len().unwrap(),
            host.export_bpf_len().unwrap(),
        );
        assert!(h > 100 && s > 100, "{h} {s}");
        assert_ne!(h, s, "CAP_SYS_ADMIN must change the filter");
        assert!(Profile::builtin().is_ok());
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn only_this_machines_abis_are_in_the_filter() {
        let pfc = default_profile()
            .compile(&[])
            .unwrap()
            .export_pfc()
            .unwrap();
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
    fn unknown_action_or_operator_names_the_entry() {
        let json = r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["write"], "action": "SCMP_ACT_BOGUS"}]}"#;
        let msg = Profile::from_str(json, "p.json").unwrap_err().to_string();
        assert!(
            msg.contains("p.json") && msg.contains("syscalls[1]"),
            "{msg}"
        );
        assert!(msg.contains("SCMP_ACT_BOGUS"), "{msg}");

        let json = r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"],
            "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_SOMETIMES"}]}]}"#;
        let msg = Profile::from_str(json, "p.json").unwrap_err().to_string();
        assert!(
            msg.contains("syscalls[0].args[0].op") && msg.contains("SCMP_CMP_SOMETIMES"),
            "{msg}"
        );

        let json = r#"{"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_PDP11"]}"#;
        let msg = Profile::from_str(json, "p.json").unwrap_err().to_string();
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
        let profile = Profile::from_str(json, "docker.json").expect("parse");
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
}
