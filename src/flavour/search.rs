//! Where flavours are found (docs/architecture.md §3): each entry of `$ELEMENTS_PATH` /
//! `$KILN_FLAVOURS_PATH`, then the built-in `flavours/`; the first wins.

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchPath {
    /// User directories first, the built-in directory last.
    pub dirs: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub dir: PathBuf,
    /// Same-named flavour directories later on the path, hidden by `dir`.
    pub shadowed: Vec<PathBuf>,
    /// diskimage-builder's own element that kiln's built-in replaced (see `STAND_INS`).
    pub stands_in_for: Option<PathBuf>,
}

/// diskimage-builder's elements that kiln's built-in flavours of the same name
/// replace: theirs partition and install GRUB as real root on loop devices
/// (losetup, kpartx, grub-install on /dev/loopN); kiln's lay out the same disk
/// without root. Only diskimage-builder's own copies are replaced; a user's
/// element of that name is theirs to keep.
pub const STAND_INS: [&str; 5] = [
    "vm",
    "bootloader",
    "block-device-mbr",
    "block-device-gpt",
    "block-device-efi",
];

/// `…/diskimage_builder/elements/<name>`: an element of diskimage-builder's package.
pub fn is_diskimage_builders_own(dir: &std::path::Path) -> bool {
    let mut up = dir.components().rev().skip(1);
    matches!(
        (up.next(), up.next()),
        (Some(e), Some(p)) if e.as_os_str() == "elements" && p.as_os_str() == "diskimage_builder"
    )
}

impl SearchPath {
    /// `user_path` holds values of `ELEMENTS_PATH` / `KILN_FLAVOURS_PATH`, each
    /// colon separated. Empty entries are ignored rather than meaning "." as in
    /// `$PATH`: a stray `::` must not make the working directory a flavour source.
    pub fn new(user_path: &[String], builtin: PathBuf) -> SearchPath {
        let mut dirs: Vec<PathBuf> = Vec::new();
        let entries = user_path
            .iter()
            .flat_map(|value| value.split(':'))
            .filter(|entry| !entry.is_empty())
            .map(PathBuf::from)
            .chain(std::iter::once(builtin));
        for dir in entries {
            // A directory listed twice would otherwise "shadow" itself.
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        SearchPath { dirs }
    }

    /// First dir containing a subdirectory `name` wins; returns it plus every
    /// later dir it shadows.
    pub fn find(&self, name: &str) -> Option<Found> {
        if !is_valid_name(name) {
            return None;
        }
        let mut hits = self
            .dirs
            .iter()
            .map(|dir| dir.join(name))
            .filter(|candidate| candidate.is_dir());
        let dir = hits.next()?;
        let shadowed: Vec<PathBuf> = hits.collect();
        let builtin = self.dirs.last().map(|b| b.join(name));
        if let Some(builtin) = builtin.filter(|b| {
            STAND_INS.contains(&name) && is_diskimage_builders_own(&dir) && shadowed.contains(b)
        }) {
            return Some(Found {
                shadowed: shadowed.into_iter().filter(|d| *d != builtin).collect(),
                dir: builtin,
                stands_in_for: Some(dir),
            });
        }
        Some(Found {
            dir,
            shadowed,
            stands_in_for: None,
        })
    }

    /// Every flavour name on the path, sorted, for "did you mean" hints.
    pub fn all_names(&self) -> Vec<String> {
        let mut names = BTreeSet::new();
        for dir in &self.dirs {
            let Ok(entries) = fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                if is_valid_name(&name) && !name.starts_with('.') && entry.path().is_dir() {
                    names.insert(name);
                }
            }
        }
        names.into_iter().collect()
    }

    /// Directories on the path that do not exist: worth a warning, since a
    /// typo in `ELEMENTS_PATH` otherwise shows up only as "unknown flavour".
    pub fn missing_dirs(&self) -> Vec<PathBuf> {
        self.dirs.iter().filter(|d| !d.is_dir()).cloned().collect()
    }
}

/// A flavour name is one path component; anything else could escape the
/// search directories.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

/// The closest of `candidates` to `name`, if it is close enough to be a typo.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let limit = (name.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .filter(|c| *c != name)
        .map(|c| (edit_distance(name, c), c))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, c)| c.to_owned())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use tempfile::TempDir;

    fn mkdirs(root: &TempDir, paths: &[&str]) {
        for p in paths {
            fs::create_dir_all(root.path().join(p)).unwrap();
        }
    }

    #[test]
    fn user_path_is_split_on_colons_and_empty_entries_are_ignored() {
        let sp = SearchPath::new(
            &["/a::/b:".to_string(), "/c".to_string()],
            "/builtin".into(),
        );
        let want: Vec<PathBuf> = ["/a", "/b", "/c", "/builtin"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(sp.dirs, want);
    }

    #[test]
    fn repeated_dir_is_listed_once() {
        let sp = SearchPath::new(&["/a:/builtin:/a".to_string()], "/builtin".into());
        assert_eq!(
            sp.dirs,
            vec![PathBuf::from("/a"), PathBuf::from("/builtin")]
        );
    }

    #[test]
    fn first_dir_wins_and_reports_what_it_shadows() {
        let t = TempDir::new().unwrap();
        mkdirs(
            &t,
            &[
                "user/debian",
                "other/debian",
                "builtin/debian",
                "builtin/vm",
            ],
        );
        let sp = SearchPath::new(
            &[format!(
                "{}:{}",
                t.path().join("user").display(),
                t.path().join("other").display()
            )],
            t.path().join("builtin"),
        );
        let found = sp.find("debian").unwrap();
        assert_eq!(found.dir, t.path().join("user/debian"));
        assert_eq!(
            found.shadowed,
            vec![
                t.path().join("other/debian"),
                t.path().join("builtin/debian")
            ]
        );
        let vm = sp.find("vm").unwrap();
        assert_eq!(vm.dir, t.path().join("builtin/vm"));
        assert!(vm.shadowed.is_empty());
        assert!(sp.find("nope").is_none());
    }

    #[test]
    fn kiln_stands_in_for_diskimage_builders_vm_only() {
        let t = TempDir::new().unwrap();
        let dib = "venv/lib/python3.11/site-packages/diskimage_builder/elements";
        mkdirs(
            &t,
            &[
                &format!("{dib}/vm"),
                &format!("{dib}/growroot"),
                "mine/vm",
                "builtin/vm",
                "builtin/growroot",
            ],
        );
        let builtin = t.path().join("builtin");
        let dib = t.path().join(dib);
        let s = SearchPath::new(&[dib.display().to_string()], builtin.clone());
        let vm = s.find("vm").unwrap();
        assert_eq!(vm.dir, builtin.join("vm"));
        assert_eq!(vm.stands_in_for, Some(dib.join("vm")));
        assert!(vm.shadowed.is_empty());
        // Other names keep diskimage-builder's element.
        assert_eq!(s.find("growroot").unwrap().dir, dib.join("growroot"));
        // A user's own vm is never replaced.
        let mine = t.path().join("mine");
        let s = SearchPath::new(&[mine.display().to_string()], builtin);
        let vm = s.find("vm").unwrap();
        assert_eq!(vm.dir, mine.join("vm"));
        assert_eq!(vm.stands_in_for, None);
    }

    #[test]
    fn a_plain_file_is_not_a_flavour() {
        let t = TempDir::new().unwrap();
        fs::write(t.path().join("debian"), "").unwrap();
        let sp = SearchPath::new(&[], t.path().to_path_buf());
        assert!(sp.find("debian").is_none());
    }

    #[test]
    fn names_that_are_not_one_component_are_never_found() {
        let t = TempDir::new().unwrap();
        mkdirs(&t, &["in/x", "outside"]);
        let sp = SearchPath::new(&[], t.path().join("in"));
        assert!(sp.find("../outside").is_none());
        assert!(sp.find("..").is_none());
        assert!(sp.find("").is_none());
    }

    #[test]
    fn all_names_lists_every_dir_once_sorted() {
        let t = TempDir::new().unwrap();
        mkdirs(&t, &["a/vm", "a/debian", "b/debian", "b/.git"]);
        fs::write(t.path().join("b/README.md"), "").unwrap();
        let sp = SearchPath::new(
            &[t.path().join("a").display().to_string()],
            t.path().join("b"),
        );
        assert_eq!(sp.all_names(), vec!["debian".to_string(), "vm".to_string()]);
    }

    #[test]
    fn missing_dirs_are_reported() {
        let t = TempDir::new().unwrap();
        let sp = SearchPath::new(&["/does/not/exist".to_string()], t.path().to_path_buf());
        assert_eq!(sp.missing_dirs(), vec![PathBuf::from("/does/not/exist")]);
    }

    #[test]
    fn did_you_mean_finds_typos_only() {
        let names = ["debian", "ubuntu", "vm", "dhcp-all-interfaces"];
        assert_eq!(did_you_mean("debain", names), Some("debian".to_string()));
        assert_eq!(did_you_mean("v", names), Some("vm".to_string()));
        assert_eq!(did_you_mean("fedora", names), None);
        assert_eq!(did_you_mean("debian", names), None);
    }
}
