//! The one error type of flavour planning: every input mistake is reported at
//! plan time (docs/architecture.md §2), so each error says where it is and, when we can
//! guess, what to do about it.

use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlavourError {
    pub flavour: Option<String>,
    pub file: Option<PathBuf>,
    pub line: Option<usize>,
    pub message: String,
    pub hint: Option<String>,
}

impl FlavourError {
    pub fn new(message: impl Into<String>) -> FlavourError {
        FlavourError {
            flavour: None,
            file: None,
            line: None,
            message: message.into(),
            hint: None,
        }
    }

    pub fn flavour(mut self, name: impl Into<String>) -> FlavourError {
        self.flavour = Some(name.into());
        self
    }

    pub fn file(mut self, path: impl AsRef<Path>) -> FlavourError {
        self.file = Some(path.as_ref().to_path_buf());
        self
    }

    /// Line numbers are 1-based; 0 means "unknown" so callers holding an
    /// optional position need not branch.
    pub fn line(mut self, line: usize) -> FlavourError {
        self.line = (line > 0).then_some(line);
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> FlavourError {
        self.hint = Some(hint.into());
        self
    }

    /// For I/O failures while reading a flavour: the path is the useful part.
    pub fn io(what: &str, path: &Path, err: &std::io::Error) -> FlavourError {
        FlavourError::new(format!("cannot {what}: {err}")).file(path)
    }
}

impl fmt::Display for FlavourError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut place = Vec::new();
        if let Some(flavour) = &self.flavour {
            place.push(format!("flavour `{flavour}`"));
        }
        if let Some(file) = &self.file {
            match self.line {
                Some(line) => place.push(format!("file {} line {line}", file.display())),
                None => place.push(format!("file {}", file.display())),
            }
        }
        if place.is_empty() {
            f.write_str(&self.message)?;
        } else {
            write!(f, "{}: {}", place.join(", "), self.message)?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for FlavourError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_flavour_file_and_line() {
        let e = FlavourError::new("unknown flavour `bar`")
            .flavour("foo")
            .file("/x/foo/element-deps")
            .line(3);
        assert_eq!(
            e.to_string(),
            "flavour `foo`, file /x/foo/element-deps line 3: unknown flavour `bar`"
        );
    }

    #[test]
    fn display_puts_hint_on_its_own_line() {
        let e = FlavourError::new("no README").hint("add README.md");
        assert_eq!(e.to_string(), "no README\n  hint: add README.md");
    }

    #[test]
    fn line_zero_means_unknown() {
        let e = FlavourError::new("m").file("/f").line(0);
        assert_eq!(e.line, None);
        assert_eq!(e.to_string(), "file /f: m");
    }
}
