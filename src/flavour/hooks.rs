//! Collecting every flavour's hooks per phase (docs/architecture.md §3): executables named
//! `^[0-9A-Za-z_-]+$`, run in numeric then byte order across all flavours;
//! everything else in a phase directory is data that travels with the hooks.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::error::FlavourError;
use super::phase::Phase;
use super::resolve::Resolved;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub phase: Phase,
    pub name: String,
    pub path: PathBuf,
    pub flavour: String,
}

/// A non-hook entry of a phase directory (file or whole subdirectory): copied
/// next to the hooks, never run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFile {
    pub phase: Phase,
    pub name: String,
    pub path: PathBuf,
    pub flavour: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HookSet {
    /// Each phase's hooks in run order; phases without hooks are absent.
    pub hooks: BTreeMap<Phase, Vec<Hook>>,
    pub data_files: Vec<DataFile>,
    /// Files named like hooks but not executable: they travel as data and never
    /// run (diskimage-builder's dib-run-parts skips them), and the build says so.
    pub skipped: Vec<DataFile>,
    pub warnings: Vec<String>,
}

impl HookSet {
    pub fn phase(&self, p: Phase) -> &[Hook] {
        self.hooks.get(&p).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn skipped_in(&self, p: Phase) -> impl Iterator<Item = &DataFile> {
        self.skipped.iter().filter(move |d| d.phase == p)
    }
}

pub fn is_hook_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// dib-run-parts order (`sort -n`): the leading number numerically, a name
/// without one counting as 0, ties broken by the bytes of the whole name.
pub fn hook_order(a: &str, b: &str) -> Ordering {
    fn number(name: &str) -> Option<&str> {
        let digits = name.len() - name.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        (digits > 0).then(|| {
            let n = name[..digits].trim_start_matches('0');
            if n.is_empty() {
                "0"
            } else {
                n
            }
        })
    }
    let (x, y) = (number(a).unwrap_or("0"), number(b).unwrap_or("0"));
    // Compare digit strings by length first: numeric order without overflow.
    let by_number = x.len().cmp(&y.len()).then_with(|| x.cmp(y));
    by_number.then_with(|| a.as_bytes().cmp(b.as_bytes()))
}

pub fn collect_hooks(resolved: &Resolved) -> Result<HookSet, FlavourError> {
    let mut set = HookSet::default();
    // (phase, entry name) -> (path, flavour, is a hook): for clash detection.
    let mut claimed: BTreeMap<(Phase, String), (PathBuf, String, bool)> = BTreeMap::new();

    for flavour in &resolved.flavours {
        for (phase, dir) in phase_dirs(&flavour.name, &flavour.dir, &mut set.warnings)? {
            for (name, path) in sorted_entries(&flavour.name, &dir)? {
                let entry = classify(&flavour.name, &name, &path, &mut set.warnings)?;
                let is_hook = matches!(entry, Entry::Hook);
                let key = (phase, name.clone());
                if let Some((other, other_flavour, other_is_hook)) = claimed.get(&key) {
                    let both = format!("{} and {}", other.display(), path.display());
                    if is_hook || *other_is_hook {
                        return Err(FlavourError::new(format!(
                            "two flavours ship `{phase}/{name}`: {both}"
                        ))
                        .flavour(flavour.name.clone())
                        .file(&path)
                        .hint(format!(
                            "hooks of one phase share a directory; rename one of them \
                             (flavours `{other_flavour}` and `{}`)",
                            flavour.name
                        )));
                    }
                    set.warnings.push(format!(
                        "flavour `{}`: data file {phase}/{name} also shipped by `{other_flavour}` \
                         ({both}); the later one, from `{}`, is used",
                        flavour.name, flavour.name
                    ));
                }
                claimed.insert(key, (path.clone(), flavour.name.clone(), is_hook));
                match entry {
                    Entry::Hook => set.hooks.entry(phase).or_default().push(Hook {
                        phase,
                        name,
                        path,
                        flavour: flavour.name.clone(),
                    }),
                    Entry::Data => set.data_files.push(DataFile {
                        phase,
                        name,
                        path,
                        flavour: flavour.name.clone(),
                    }),
                    Entry::NotExecutable => {
                        let d = DataFile {
                            phase,
                            name,
                            path,
                            flavour: flavour.name.clone(),
                        };
                        set.data_files.push(d.clone());
                        set.skipped.push(d);
                    }
                }
            }
        }
    }
    for hooks in set.hooks.values_mut() {
        hooks.sort_by(|a, b| hook_order(&a.name, &b.name));
    }
    Ok(set)
}

/// The flavour's phase directories, accepting diskimage-builder's American
/// spellings. An unknown `*.d` directory is most likely a misspelt phase whose
/// hooks would silently never run, so it gets a warning.
fn phase_dirs(
    flavour: &str,
    dir: &Path,
    warnings: &mut Vec<String>,
) -> Result<Vec<(Phase, PathBuf)>, FlavourError> {
    let mut found = Vec::new();
    for (name, path) in sorted_entries(flavour, dir)? {
        if !path.is_dir() {
            continue;
        }
        match Phase::from_dir_name(&name) {
            Some(phase) => found.push((phase, path)),
            None if name.ends_with(".d") && !NOT_PHASES.contains(&name.as_str()) => {
                warnings.push(format!(
                    "flavour `{flavour}`: {} is not a phase directory and will not run",
                    path.display()
                ))
            }
            None => {}
        }
    }
    Ok(found)
}

/// `*.d` directories of the contract that are not hook phases: sourced
/// (environment.d) or read by the ramdisk flavour (DIB's ramdisk element).
pub const NOT_PHASES: [&str; 4] = [
    "environment.d",
    "init.d",
    "binary-deps.d",
    "ramdisk-install.d",
];

fn sorted_entries(flavour: &str, dir: &Path) -> Result<Vec<(String, PathBuf)>, FlavourError> {
    let read = fs::read_dir(dir).map_err(|e| FlavourError::io("list", dir, &e).flavour(flavour))?;
    let mut entries = Vec::new();
    for entry in read {
        let entry = entry.map_err(|e| FlavourError::io("list", dir, &e).flavour(flavour))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Err(FlavourError::new("file name is not UTF-8")
                .flavour(flavour)
                .file(entry.path()));
        };
        entries.push((name.to_owned(), entry.path()));
    }
    entries.sort();
    Ok(entries)
}

enum Entry {
    Hook,
    Data,
    NotExecutable,
}

fn classify(
    flavour: &str,
    name: &str,
    path: &Path,
    warnings: &mut Vec<String>,
) -> Result<Entry, FlavourError> {
    // Follows symlinks: diskimage-builder elements often link hooks to shared scripts.
    let meta = fs::metadata(path).map_err(|e| {
        FlavourError::io("read", path, &e)
            .flavour(flavour)
            .hint("a broken symlink? point it at an existing file or remove it")
    })?;
    if meta.is_dir() {
        return Ok(Entry::Data);
    }
    if !meta.is_file() {
        return Err(FlavourError::new("not a regular file or directory")
            .flavour(flavour)
            .file(path)
            .hint("phase directories may hold only hooks, data files and directories"));
    }
    let executable = meta.permissions().mode() & 0o111 != 0;
    if !is_hook_name(name) {
        if executable && name.contains('.') {
            warnings.push(format!(
                "flavour `{flavour}`: {} has a dot in its name and will not run \
                 (hook names are [0-9A-Za-z_-]+)",
                path.display()
            ));
        }
        return Ok(Entry::Data);
    }
    if !executable {
        // diskimage-builder's own elements ship such files (enable-serial-console's
        // cleanup.d/99-fix-grub); refusing them would refuse those elements. Saying so
        // keeps a forgotten chmod from dropping a step unnoticed.
        warnings.push(format!(
            "flavour `{flavour}`: {} is not executable and will not run, as under \
             diskimage-builder (if it is a hook: chmod +x {}; if it is data: rename it \
             with an extension such as .conf)",
            path.display(),
            path.display()
        ));
        return Ok(Entry::NotExecutable);
    }
    Ok(Entry::Hook)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flavour::resolve::resolve;
    use crate::flavour::resolve::tests::{flavour, os};
    use crate::flavour::search::SearchPath;
    use tempfile::TempDir;

    fn write(path: &Path, mode: u32) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, "#!/bin/sh\n").unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn resolved(t: &TempDir, names: &[&str]) -> Resolved {
        let sp = SearchPath::new(&[], t.path().to_path_buf());
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        resolve(&sp, &names).unwrap()
    }

    fn names(hooks: &[Hook]) -> Vec<&str> {
        hooks.iter().map(|h| h.name.as_str()).collect()
    }

    #[test]
    fn order_is_numeric_then_bytes() {
        let mut v = vec![
            "zz", "10-c", "9-a", "10-b", "100-a", "01-x", "Z", "_a", "0010-a", "00-a",
        ];
        v.sort_by(|a, b| hook_order(a, b));
        // What `LANG=C sort -n` prints for these names: no number counts as 0.
        assert_eq!(
            v,
            vec!["00-a", "Z", "_a", "zz", "01-x", "9-a", "0010-a", "10-b", "10-c", "100-a"]
        );
    }

    #[test]
    fn huge_numbers_do_not_overflow() {
        assert_eq!(
            hook_order("99999999999999999999999-a", "100000000000000000000000-a"),
            Ordering::Less
        );
    }

    #[test]
    fn hooks_of_all_flavours_merge_in_numeric_order() {
        let t = TempDir::new().unwrap();
        os(t.path());
        let a = flavour(t.path(), "a", &[], &[]);
        let b = flavour(t.path(), "b", &[], &[]);
        write(&a.join("install.d/10-b"), 0o755);
        write(&a.join("install.d/zz"), 0o755);
        write(&b.join("install.d/9-a"), 0o755);
        write(&b.join("install.d/10-c"), 0o700);
        write(&b.join("root.d/50-root"), 0o755);
        let set = collect_hooks(&resolved(&t, &["debian", "a", "b"])).unwrap();
        assert_eq!(
            names(set.phase(Phase::Install)),
            vec!["zz", "9-a", "10-b", "10-c"]
        );
        assert_eq!(set.phase(Phase::Install)[1].flavour, "b");
        assert_eq!(set.phase(Phase::Install)[1].path, b.join("install.d/9-a"));
        assert_eq!(names(set.phase(Phase::Root)), vec!["50-root"]);
        assert!(set.phase(Phase::Cleanup).is_empty());
        assert!(set.warnings.is_empty(), "{:?}", set.warnings);
    }

    #[test]
    fn american_spelling_is_accepted() {
        let t = TempDir::new().unwrap();
        os(t.path());
        let a = flavour(t.path(), "a", &[], &[]);
        write(&a.join("finalize.d/50-x"), 0o755);
        write(&a.join("pre-finalize.d/50-y"), 0o755);
        let set = collect_hooks(&resolved(&t, &["debian", "a"])).unwrap();
        assert_eq!(names(set.phase(Phase::Finalise)), vec!["50-x"]);
        assert_eq!(names(set.phase(Phase::PreFinalise)), vec!["50-y"]);
    }

    #[test]
    fn same_hook_in_two_flavours_names_both_files() {
        let t = TempDir::new().unwrap();
        os(t.path());
        let a = flavour(t.path(), "a", &[], &[]);
        let b = flavour(t.path(), "b", &[], &[]);
        write(&a.join("install.d/50-setup"), 0o755);
        write(&b.join("install.d/50-setup"), 0o755);
        let e = collect_hooks(&resolved(&t, &["debian", "a", "b"])).unwrap_err();
        let shown = e.to_string();
        assert!(
            shown.contains(&a.join("install.d/50-setup").display().to_string()),
            "{shown}"
        );
        assert!(
            shown.contains(&b.join("install.d/50-setup").display().to_string()),
            "{shown}"
        );
    }

    #[test]
    fn same_name_in_different_phases_is_fine() {
        let t = TempDir::new().unwrap();
        os(t.path());
        let a = flavour(t.path(), "a", &[], &[]);
        let b = flavour(t.path(), "b", &[], &[]);
        write(&a.join("install.d/50-setup"), 0o755);
        write(&b.join("post-install.d/50-setup"), 0o755);
        assert!(collect_hooks(&resolved(&t, &["debian", "a", "b"])).is_ok());
    }

    #[test]
    fn non_executable_hook_is_skipped_with_a_warning_naming_it() {
        let t = TempDir::new().unwrap();
        os(t.path());
        let a = flavour(t.path(), "a", &[], &[]);
        let hook = a.join("cleanup.d/99-fix-grub");
        write(&hook, 0o644);
        write(&a.join("cleanup.d/50-real"), 0o755);
        let set = collect_hooks(&resolved(&t, &["debian", "a"])).unwrap();
        assert_eq!(names(set.phase(Phase::Cleanup)), vec!["50-real"]);
        let skipped: Vec<_> = set
            .skipped_in(Phase::Cleanup)
            .map(|d| d.path.clone())
            .collect();
        assert_eq!(skipped, vec![hook.clone()]);
        // It still travels with the hooks, as diskimage-builder copies it.
        assert!(set.data_files.iter().any(|d| d.path == hook));
        assert_eq!(set.warnings.len(), 1, "{:?}", set.warnings);
        let w = &set.warnings[0];
        assert!(
            w.contains(&format!(
                "{} is not executable and will not run",
                hook.display()
            )),
            "{w}"
        );
        assert!(w.contains(&format!("chmod +x {}", hook.display())), "{w}");
    }

    #[test]
    fn data_files_travel_and_executable_dotted_names_warn() {
        let t = TempDir::new().unwrap();
        os(t.path());
        let a = flavour(t.path(), "a", &[], &[]);
        write(&a.join("install.d/50-run"), 0o755);
        write(&a.join("install.d/app.conf"), 0o644);
        write(&a.join("install.d/50-setup.sh"), 0o755);
        write(&a.join("install.d/templates/x.tmpl"), 0o644);
        let set = collect_hooks(&resolved(&t, &["debian", "a"])).unwrap();
        assert_eq!(names(set.phase(Phase::Install)), vec!["50-run"]);
        let data: Vec<&str> = set.data_files.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(data, vec!["50-setup.sh", "app.conf", "templates"]);
        assert_eq!(set.warnings.len(), 1, "{:?}", set.warnings);
        assert!(set.warnings[0].contains("50-setup.sh has a dot in its name and will not run"));
        assert!(set.warnings[0].contains("(hook names are [0-9A-Za-z_-]+)"));
    }

    #[test]
    fn symlinked_hook_is_followed() {
        let t = TempDir::new().unwrap();
        os(t.path());
        let a = flavour(t.path(), "a", &[], &[]);
        write(&a.join("bin/shared"), 0o755);
        fs::create_dir_all(a.join("install.d")).unwrap();
        std::os::unix::fs::symlink(a.join("bin/shared"), a.join("install.d/10-shared")).unwrap();
        let set = collect_hooks(&resolved(&t, &["debian", "a"])).unwrap();
        assert_eq!(names(set.phase(Phase::Install)), vec!["10-shared"]);
    }

    #[test]
    fn broken_symlink_is_an_error() {
        let t = TempDir::new().unwrap();
        os(t.path());
        let a = flavour(t.path(), "a", &[], &[]);
        fs::create_dir_all(a.join("install.d")).unwrap();
        std::os::unix::fs::symlink(a.join("nowhere"), a.join("install.d/10-gone")).unwrap();
        let e = collect_hooks(&resolved(&t, &["debian", "a"])).unwrap_err();
        assert_eq!(e.file, Some(a.join("install.d/10-gone")));
    }

    #[test]
    fn misspelt_phase_dir_warns() {
        let t = TempDir::new().unwrap();
        os(t.path());
        let a = flavour(t.path(), "a", &[], &[]);
        write(&a.join("instal.d/10-x"), 0o755);
        fs::create_dir_all(a.join("environment.d")).unwrap();
        let set = collect_hooks(&resolved(&t, &["debian", "a"])).unwrap();
        assert_eq!(set.warnings.len(), 1, "{:?}", set.warnings);
        assert!(set.warnings[0].contains("instal.d is not a phase directory"));
    }

    #[test]
    fn data_file_clash_warns_but_hook_vs_data_dir_clash_errors() {
        let t = TempDir::new().unwrap();
        os(t.path());
        let a = flavour(t.path(), "a", &[], &[]);
        let b = flavour(t.path(), "b", &[], &[]);
        write(&a.join("install.d/app.conf"), 0o644);
        write(&b.join("install.d/app.conf"), 0o644);
        let set = collect_hooks(&resolved(&t, &["debian", "a", "b"])).unwrap();
        assert_eq!(set.warnings.len(), 1);
        write(&a.join("install.d/50-x"), 0o755);
        write(&b.join("install.d/50-x/data"), 0o644);
        assert!(collect_hooks(&resolved(&t, &["debian", "a", "b"])).is_err());
    }
}
