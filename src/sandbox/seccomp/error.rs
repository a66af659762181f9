//! What can go wrong with a profile, each message naming the profile and where in it.

use std::fmt;
use std::path::PathBuf;

#[derive(Debug)]
pub enum SeccompError {
    /// The profile file could not be read.
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The profile is not JSON, or JSON of the wrong shape (a string where a list
    /// belongs, ...): serde_json knows the line either way.
    Json {
        origin: String,
        line: usize,
        column: usize,
        source: serde_json::Error,
    },
    /// The profile has the right shape but says something kiln cannot do; `at` is a
    /// path such as `syscalls[3].action`.
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
                let invalid = if source.is_data() {
                    ""
                } else {
                    "invalid JSON: "
                };
                write!(
                    f,
                    "seccomp profile {origin}: line {line}, column {column}: {invalid}{what}"
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
        }
    }
}

impl std::error::Error for SeccompError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Read { source, .. } => Some(source),
            Self::Json { source, .. } => Some(source),
            Self::Compile { source, .. } | Self::Load { source } => Some(source),
            Self::Invalid { .. } => None,
        }
    }
}
