//! `environment.d` files (docs/architecture.md §3): sourced by bash before every phase, in
//! name order across all flavours. diskimage-builder copied them into one
//! directory, so a same-named file silently replaced another; kiln refuses that.

use std::collections::BTreeMap;
use std::fs;

use super::error::FlavourError;
use super::resolve::Resolved;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvFile {
    pub name: String,
    pub path: std::path::PathBuf,
    pub flavour: String,
}

pub fn environment_files(resolved: &Resolved) -> Result<Vec<EnvFile>, FlavourError> {
    // BTreeMap over String sorts by bytes, which is the order bash's glob gives under LC_ALL=C.
    let mut files: BTreeMap<String, EnvFile> = BTreeMap::new();
    for flavour in &resolved.flavours {
        let dir = flavour.dir.join("environment.d");
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(FlavourError::io("list", &dir, &e).flavour(flavour.name.clone())),
        };
        for entry in entries {
            let entry = entry
                .map_err(|e| FlavourError::io("list", &dir, &e).flavour(flavour.name.clone()))?;
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                return Err(FlavourError::new("file name is not UTF-8")
                    .flavour(flavour.name.clone())
                    .file(&path));
            };
            // The sourcing glob `*` skips dotfiles (.gitignore, editor swap files).
            if name.starts_with('.') {
                continue;
            }
            if !path.is_file() {
                return Err(
                    FlavourError::new("environment.d may hold only files to source")
                        .flavour(flavour.name.clone())
                        .file(&path)
                        .hint("move it out of environment.d, or fix the symlink if it is broken"),
                );
            }
            if let Some(other) = files.get(&name) {
                return Err(FlavourError::new(format!(
                    "environment.d/{name} is shipped by both `{}` ({}) and `{}` ({})",
                    other.flavour,
                    other.path.display(),
                    flavour.name,
                    path.display()
                ))
                .flavour(flavour.name.clone())
                .file(&path)
                .hint("rename one of them; both are sourced from one directory"));
            }
            files.insert(
                name.clone(),
                EnvFile {
                    name,
                    path,
                    flavour: flavour.name.clone(),
                },
            );
        }
    }
    Ok(files.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flavour::resolve::tests::{flavour, os};
    use crate::flavour::resolve::{resolve, Resolved};
    use crate::flavour::search::SearchPath;
    use std::path::Path;
    use tempfile::TempDir;

    fn env(dir: &Path, name: &str) {
        fs::create_dir_all(dir.join("environment.d")).unwrap();
        fs::write(dir.join("environment.d").join(name), "export X=1\n").unwrap();
    }

    fn resolved(t: &TempDir, names: &[&str]) -> Resolved {
        let sp = SearchPath::new(&[], t.path().to_path_buf());
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        resolve(&sp, &names).unwrap()
    }

    #[test]
    fn files_of_all_flavours_are_sorted_by_name() {
        let t = TempDir::new().unwrap();
        os(t.path());
        let a = flavour(t.path(), "a", &[], &[]);
        let b = flavour(t.path(), "b", &[], &[]);
        env(&a, "50-a");
        env(&a, "10-a.bash");
        env(&b, "20-b");
        env(&b, "Z-b");
        env(&b, ".hidden");
        let files = environment_files(&resolved(&t, &["debian", "a", "b"])).unwrap();
        let got: Vec<(&str, &str)> = files
            .iter()
            .map(|f| (f.name.as_str(), f.flavour.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("10-a.bash", "a"),
                ("20-b", "b"),
                ("50-a", "a"),
                ("Z-b", "b")
            ]
        );
        assert_eq!(files[0].path, a.join("environment.d/10-a.bash"));
    }

    #[test]
    fn same_name_in_two_flavours_names_both() {
        let t = TempDir::new().unwrap();
        os(t.path());
        let a = flavour(t.path(), "a", &[], &[]);
        let b = flavour(t.path(), "b", &[], &[]);
        env(&a, "10-proxy");
        env(&b, "10-proxy");
        let e = environment_files(&resolved(&t, &["debian", "a", "b"])).unwrap_err();
        let shown = e.to_string();
        assert!(
            shown.contains(&a.join("environment.d/10-proxy").display().to_string()),
            "{shown}"
        );
        assert!(
            shown.contains(&b.join("environment.d/10-proxy").display().to_string()),
            "{shown}"
        );
    }

    #[test]
    fn no_environment_d_anywhere_is_empty() {
        let t = TempDir::new().unwrap();
        os(t.path());
        assert!(environment_files(&resolved(&t, &["debian"]))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_directory_inside_environment_d_is_an_error() {
        let t = TempDir::new().unwrap();
        os(t.path());
        let a = flavour(t.path(), "a", &[], &[]);
        fs::create_dir_all(a.join("environment.d/sub")).unwrap();
        let e = environment_files(&resolved(&t, &["debian", "a"])).unwrap_err();
        assert_eq!(e.file, Some(a.join("environment.d/sub")));
    }
}
