//! Layered settings: built-in < /etc/kiln/defaults < ~/.config/kiln/defaults <
//! environment < command line (the last layer is applied by `Options`).
//!
//! A defaults file is what diskimage-builder's `lib/img-defaults` sets: lines of
//! `NAME=value` (optionally `export NAME=value`), `#` comments, quotes stripped.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Default)]
pub struct Vars {
    map: BTreeMap<String, String>,
    /// Where each value came from, for `--dry-run` and error messages.
    origin: BTreeMap<String, String>,
}

impl Vars {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.map
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub fn set(&mut self, name: &str, value: &str, origin: &str) {
        self.map.insert(name.to_string(), value.to_string());
        self.origin.insert(name.to_string(), origin.to_string());
    }

    pub fn origin(&self, name: &str) -> Option<&str> {
        self.origin.get(name).map(String::as_str)
    }

    /// Every variable hooks should see: all `DIB_*` plus the few unprefixed names
    /// diskimage-builder elements read.
    pub fn for_hooks(&self) -> impl Iterator<Item = (&str, &str)> {
        self.map
            .iter()
            .filter(|(k, _)| k.starts_with("DIB_") || PASSED.contains(&k.as_str()))
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn load(env: impl Iterator<Item = (String, String)>) -> Result<Vars> {
        let mut vars = Vars::default();
        let mut files = vec![PathBuf::from("/etc/kiln/defaults")];
        if let Some(home) = std::env::var_os("HOME") {
            files.push(Path::new(&home).join(".config/kiln/defaults"));
        }
        for f in files {
            match std::fs::read_to_string(&f) {
                Ok(text) => vars.read_file(&text, &f)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("reading {}", f.display())),
            }
        }
        for (k, v) in env {
            if k.starts_with("DIB_")
                || k.starts_with("KILN_")
                || PASSED.contains(&k.as_str())
                || KNOWN_ENV.contains(&k.as_str())
            {
                vars.set(&k, &v, "environment");
            }
        }
        Ok(vars)
    }

    fn read_file(&mut self, text: &str, path: &Path) -> Result<()> {
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line = line.strip_prefix("export ").unwrap_or(line).trim();
            let Some((k, v)) = line.split_once('=') else {
                bail!(
                    "{} line {}: expected NAME=value, found `{raw}`",
                    path.display(),
                    i + 1
                );
            };
            let k = k.trim();
            if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                bail!(
                    "{} line {}: `{k}` is not a variable name",
                    path.display(),
                    i + 1
                );
            }
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|s| s.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')))
                .unwrap_or(v);
            self.set(k, v, &path.display().to_string());
        }
        Ok(())
    }
}

/// Unprefixed variables diskimage-builder elements read from the environment.
const PASSED: [&str; 4] = ["FS_TYPE", "ELEMENTS_PATH", "IMAGE_NAME", "ARCH"];
const KNOWN_ENV: [&str; 4] = ["SOURCE_DATE_EPOCH", "http_proxy", "https_proxy", "no_proxy"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_file_lines_and_errors() {
        let mut v = Vars::default();
        v.read_file(
            "# c\nexport DIB_RELEASE=\"bookworm\"\nFS_TYPE='xfs'\n\nDIB_X=1\n",
            Path::new("/d"),
        )
        .unwrap();
        assert_eq!(v.get("DIB_RELEASE"), Some("bookworm"));
        assert_eq!(v.get("FS_TYPE"), Some("xfs"));
        assert_eq!(v.origin("DIB_X"), Some("/d"));
        let err = v
            .read_file("JUNK\n", Path::new("/d"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/d line 1"), "{err}");
    }

    #[test]
    fn environment_overrides_files() {
        let mut v = Vars::default();
        v.read_file("DIB_RELEASE=bullseye\n", Path::new("/d"))
            .unwrap();
        v.set("DIB_RELEASE", "bookworm", "environment");
        assert_eq!(v.get("DIB_RELEASE"), Some("bookworm"));
        assert_eq!(v.for_hooks().count(), 1);
    }
}
