//! Reading a profile and checking what it says: every action, operator and
//! architecture must be one libseccomp knows, and each refusal names where it is
//! (`syscalls[3].args[0].op`).

use std::path::Path;

use libseccomp::{ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp};

use super::format::{self, ProfileFile};
use super::{SeccompError, DEFAULT_PROFILE};

/// A parsed and checked profile; every name and operator is known, syscall names
/// are resolved only by [`Profile::compile`].
#[derive(Debug, Clone)]
pub struct Profile {
    pub(super) origin: String,
    pub(super) default_action: ScmpAction,
    pub(super) arches: Vec<ScmpArch>,
    pub(super) flags: Vec<String>,
    pub(super) entries: Vec<Entry>,
}

#[derive(Debug, Clone)]
pub(super) struct Entry {
    /// Where it is in the profile (`syscalls[3]`), for libseccomp's refusals.
    pub(super) at: String,
    pub(super) names: Vec<String>,
    pub(super) action: ScmpAction,
    pub(super) args: Vec<(u32, ScmpArgCompare)>,
    pub(super) includes: Conditions,
    pub(super) excludes: Conditions,
}

/// Docker's `includes`/`excludes`; `minKernel` is ignored (a rule for a syscall the
/// kernel lacks is harmless).
#[derive(Debug, Clone, Default)]
pub(super) struct Conditions {
    /// As "CAP_SYS_ADMIN", however the profile spells them.
    pub(super) caps: Vec<String>,
    pub(super) arches: Vec<String>,
}

impl Profile {
    pub fn from_file(path: &Path) -> Result<Profile, SeccompError> {
        let json = std::fs::read_to_string(path).map_err(|source| SeccompError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&json, &path.display().to_string())
    }

    /// The profile shipped as `seccomp/default.json`.
    pub fn builtin() -> Result<Profile, SeccompError> {
        Self::from_json(DEFAULT_PROFILE, "built-in seccomp/default.json")
    }

    /// `origin` names the profile in error messages (a path, or "built-in").
    pub(super) fn from_json(json: &str, origin: &str) -> Result<Profile, SeccompError> {
        let file: format::File =
            serde_json::from_str(json).map_err(|source| SeccompError::Json {
                origin: origin.to_string(),
                line: source.line(),
                column: source.column(),
                source,
            })?;
        check(file.0, origin).map_err(|(at, message)| SeccompError::Invalid {
            origin: origin.to_string(),
            at,
            message,
        })
    }
}

/// A capability in its canonical spelling: `sys_admin` is `CAP_SYS_ADMIN`.
pub(super) fn cap_name(name: &str) -> String {
    let upper = name.trim().to_ascii_uppercase();
    if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    }
}

// ---- checking: errors are (where, what), turned into SeccompError::Invalid ----

type Bad = (String, String);

fn bad<T>(at: &str, message: impl Into<String>) -> Result<T, Bad> {
    Err((at.to_string(), message.into()))
}

fn check(file: ProfileFile, origin: &str) -> Result<Profile, Bad> {
    let Some(action) = file.default_action else {
        return bad(
            "top level",
            "\"defaultAction\" is missing (expected an OCI linux.seccomp object)",
        );
    };
    let errno = file
        .default_errno_ret
        .map(|n| errno_ret(n, "defaultErrnoRet"))
        .transpose()?;
    let default_action = parse_action(&action, errno, "defaultAction")?;

    let mut arches = Vec::new();
    for (i, name) in file.architectures.iter().flatten().enumerate() {
        arches.push(parse_arch(name, &format!("architectures[{i}]"))?);
    }
    // Docker's archMap: each main arch with its compat arches; compile keeps ours.
    for (i, m) in file.arch_map.iter().flatten().enumerate() {
        let at = format!("archMap[{i}]");
        let Some(main) = &m.architecture else {
            return bad(&at, "\"architecture\" is missing");
        };
        arches.push(parse_arch(main, &format!("{at}.architecture"))?);
        for (j, name) in m.sub_architectures.iter().flatten().enumerate() {
            arches.push(parse_arch(name, &format!("{at}.subArchitectures[{j}]"))?);
        }
    }

    let entries = file
        .syscalls
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, s)| check_entry(s.0, &format!("syscalls[{i}]")))
        .collect::<Result<_, _>>()?;
    Ok(Profile {
        origin: origin.to_string(),
        default_action,
        arches,
        flags: file.flags.unwrap_or_default(),
        entries,
    })
}

fn check_entry(s: format::Syscall, at: &str) -> Result<Entry, Bad> {
    let names = match (s.names, s.name) {
        (Some(names), _) => names,
        (None, Some(name)) => vec![name],
        (None, None) => return bad(at, "\"names\" is missing"),
    };
    let Some(action) = s.action else {
        return bad(at, "\"action\" is missing");
    };
    let errno = s
        .errno_ret
        .map(|n| errno_ret(n, &format!("{at}.errnoRet")))
        .transpose()?;
    let action = parse_action(&action, errno, &format!("{at}.action"))?;
    let args = s
        .args
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, a)| check_arg(a, &format!("{at}.args[{i}]")))
        .collect::<Result<_, _>>()?;
    Ok(Entry {
        at: at.to_string(),
        names,
        action,
        args,
        includes: conditions(s.includes.map(|c| c.0)),
        excludes: conditions(s.excludes.map(|c| c.0)),
    })
}

fn conditions(c: Option<format::Conditions>) -> Conditions {
    let Some(c) = c else {
        return Conditions::default();
    };
    Conditions {
        caps: c.caps.iter().flatten().map(|c| cap_name(c)).collect(),
        arches: c.arches.unwrap_or_default(),
    }
}

/// The kernel hands the value back as -errno, so it must be one libc sees as an error.
fn errno_ret(n: u64, at: &str) -> Result<i32, Bad> {
    match n {
        0..=4095 => Ok(n as i32),
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

fn check_arg(a: &format::Arg, at: &str) -> Result<(u32, ScmpArgCompare), Bad> {
    let missing = |key: &str| bad(at, format!("\"{key}\" is missing"));
    let Some(index) = a.index else {
        return missing("index");
    };
    if index > 5 {
        return bad(
            &format!("{at}.index"),
            format!("argument index {index} is not 0..=5"),
        );
    }
    let index = index as u32;
    let Some(value) = a.value else {
        return missing("value");
    };
    let Some(op) = a.op.as_deref() else {
        return missing("op");
    };
    let (op, datum) = match op {
        "SCMP_CMP_NE" => (ScmpCompareOp::NotEqual, value),
        "SCMP_CMP_LT" => (ScmpCompareOp::Less, value),
        "SCMP_CMP_LE" => (ScmpCompareOp::LessOrEqual, value),
        "SCMP_CMP_EQ" => (ScmpCompareOp::Equal, value),
        "SCMP_CMP_GE" => (ScmpCompareOp::GreaterEqual, value),
        "SCMP_CMP_GT" => (ScmpCompareOp::Greater, value),
        // As in runc and libseccomp: value is the mask, valueTwo the expected result.
        "SCMP_CMP_MASKED_EQ" => (ScmpCompareOp::MaskedEqual(value), a.value_two.unwrap_or(0)),
        other => return bad(&format!("{at}.op"), format!("unknown operator {other:?}")),
    };
    Ok((index, ScmpArgCompare::new(index, op, datum)))
}
