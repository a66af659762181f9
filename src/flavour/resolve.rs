//! Expanding the requested flavours into the full set (docs/architecture.md §3), with the
//! diskimage-builder rules: breadth-first set expansion over `element-deps`,
//! virtual names satisfied through `element-provides`, exactly one
//! `operating-system`. Unlike diskimage-builder, a dependency cycle is an error.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};

use super::error::FlavourError;
use super::search::{did_you_mean, is_valid_name, SearchPath};

pub const OPERATING_SYSTEM: &str = "operating-system";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flavour {
    pub name: String,
    pub dir: PathBuf,
    /// From `element-deps`, in file order, without repeats.
    pub deps: Vec<String>,
    /// From `element-provides`, in file order, without repeats.
    pub provides: Vec<String>,
    /// diskimage-builder's element this built-in stands in for (search::STAND_INS).
    pub stands_in_for: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// In order of first discovery by the breadth-first expansion.
    pub flavours: Vec<Flavour>,
    /// Things worth a log line, such as which directory shadowed which.
    pub notes: Vec<String>,
}

impl Resolved {
    pub fn names(&self) -> Vec<String> {
        self.flavours.iter().map(|f| f.name.clone()).collect()
    }

    pub fn provider_of(&self, virt: &str) -> Option<&Flavour> {
        self.flavours
            .iter()
            .find(|f| f.provides.iter().any(|p| p == virt))
    }

    /// True if a flavour of that name is in the set, or one provides it: a
    /// dependency on either would be satisfied.
    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some() || self.provider_of(name).is_some()
    }

    pub fn get(&self, name: &str) -> Option<&Flavour> {
        self.flavours.iter().find(|f| f.name == name)
    }
}

/// Who asked for a name, so an unknown name can be traced to its source.
#[derive(Debug, Clone)]
enum Origin {
    CommandLine,
    Dep {
        flavour: String,
        file: PathBuf,
        line: usize,
    },
}

/// A loaded flavour plus the line of each dependency, for error messages.
struct Loaded {
    flavour: Flavour,
    dep_lines: Vec<usize>,
    provide_lines: Vec<usize>,
}

pub fn resolve(search: &SearchPath, requested: &[String]) -> Result<Resolved, FlavourError> {
    resolve_with_defaults(search, requested, &[])
}

/// As [`resolve`], and a dependency on a virtual name nobody in the set provides
/// pulls in that name's default provider (`block-device` → `block-device-gpt`, as
/// diskimage-builder's `DIB_BLOCK_DEVICE` default does).
pub fn resolve_with_defaults(
    search: &SearchPath,
    requested: &[String],
    defaults: &[(String, String)],
) -> Result<Resolved, FlavourError> {
    let mut queue: VecDeque<(String, Origin)> = VecDeque::new();
    let mut seen: HashSet<String> = HashSet::new();
    for name in requested {
        if seen.insert(name.clone()) {
            queue.push_back((name.clone(), Origin::CommandLine));
        }
    }

    let mut loaded: Vec<Loaded> = Vec::new();
    let mut notes = Vec::new();
    // virtual name -> providing flavours, in discovery order
    let mut providers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    // Names no directory matched; fine if some flavour in the set provides them.
    let mut unfound: Vec<(String, Origin)> = Vec::new();

    loop {
        while let Some((name, origin)) = queue.pop_front() {
            if providers.contains_key(&name) {
                continue;
            }
            let Some(found) = search.find(&name) else {
                unfound.push((name, origin));
                continue;
            };
            if let Some(theirs) = &found.stands_in_for {
                notes.push(format!(
                    "flavour `{name}`: kiln's built-in {} stands in for diskimage-builder's {} \
                     (its layout and GRUB, made without root or loop devices)",
                    found.dir.display(),
                    theirs.display()
                ));
            }
            for shadowed in &found.shadowed {
                notes.push(format!(
                    "flavour `{name}` from {} shadows {}",
                    found.dir.display(),
                    shadowed.display()
                ));
            }
            let mut item = load(&name, found.dir)?;
            item.flavour.stands_in_for = found.stands_in_for.clone();
            for p in &item.flavour.provides {
                providers.entry(p.clone()).or_default().push(name.clone());
            }
            let deps_file = item.flavour.dir.join("element-deps");
            for (dep, line) in item.flavour.deps.iter().zip(&item.dep_lines) {
                if seen.insert(dep.clone()) {
                    let origin = Origin::Dep {
                        flavour: name.clone(),
                        file: deps_file.clone(),
                        line: *line,
                    };
                    queue.push_back((dep.clone(), origin));
                }
            }
            loaded.push(item);
        }
        let mut added = false;
        for (name, origin) in &unfound {
            if providers.contains_key(name) {
                continue;
            }
            if let Some((_, default)) = defaults.iter().find(|(v, _)| v == name) {
                if seen.insert(default.clone()) {
                    queue.push_back((default.clone(), origin.clone()));
                    added = true;
                }
            }
        }
        if !added {
            break;
        }
    }

    for (name, origin) in &unfound {
        if providers.contains_key(name) {
            continue;
        }
        if let Some((_, default)) = defaults.iter().find(|(v, _)| v == name) {
            return Err(unknown_flavour(search, default, origin, &providers).hint(format!(
                "nothing in the set provides `{name}`, and its default provider `{default}` does not exist"
            )));
        }
        return Err(unknown_flavour(search, name, origin, &providers));
    }
    check_provides(&loaded, &providers, requested, search)?;
    check_cycles(&loaded, &providers)?;

    Ok(Resolved {
        flavours: loaded.into_iter().map(|l| l.flavour).collect(),
        notes,
    })
}

fn load(name: &str, dir: PathBuf) -> Result<Loaded, FlavourError> {
    if !dir.join("README.md").is_file() && !dir.join("README.rst").is_file() {
        return Err(
            FlavourError::new(format!("{} has no README", dir.display()))
                .flavour(name)
                .hint(format!(
                    "add {}/README.md (README.rst is accepted too) saying what `{name}` does",
                    dir.display()
                )),
        );
    }
    let (deps, dep_lines) = read_name_list(name, &dir.join("element-deps"))?;
    let (provides, provide_lines) = read_name_list(name, &dir.join("element-provides"))?;
    Ok(Loaded {
        flavour: Flavour {
            name: name.to_owned(),
            dir,
            deps,
            provides,
            stands_in_for: None,
        },
        dep_lines,
        provide_lines,
    })
}

/// Reads `element-deps` / `element-provides`: one name per line; blank lines
/// and `#` comments ignored. A missing file is an empty list.
pub fn read_name_list(
    flavour: &str,
    path: &Path,
) -> Result<(Vec<String>, Vec<usize>), FlavourError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((vec![], vec![])),
        Err(e) => return Err(FlavourError::io("read", path, &e).flavour(flavour)),
    };
    let mut names: Vec<String> = Vec::new();
    let mut lines = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let entry = raw.split('#').next().unwrap_or("").trim();
        if entry.is_empty() {
            continue;
        }
        if entry.split_whitespace().count() > 1 || !is_valid_name(entry) {
            return Err(
                FlavourError::new(format!("`{entry}` is not a flavour name"))
                    .flavour(flavour)
                    .file(path)
                    .line(i + 1)
                    .hint("write one flavour name per line"),
            );
        }
        if !names.iter().any(|n| n == entry) {
            names.push(entry.to_owned());
            lines.push(i + 1);
        }
    }
    Ok((names, lines))
}

fn unknown_flavour(
    search: &SearchPath,
    name: &str,
    origin: &Origin,
    providers: &BTreeMap<String, Vec<String>>,
) -> FlavourError {
    let all = search.all_names();
    let candidates = all
        .iter()
        .map(String::as_str)
        .chain(providers.keys().map(String::as_str));
    let hint = match did_you_mean(name, candidates) {
        Some(close) => format!("did you mean `{close}`?"),
        None => {
            let dirs: Vec<String> = search
                .dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect();
            format!(
                "searched {}; add a directory to ELEMENTS_PATH if the flavour lives elsewhere",
                dirs.join(", ")
            )
        }
    };
    match origin {
        Origin::CommandLine => FlavourError::new(format!(
            "unknown flavour `{name}` (requested on the command line)"
        ))
        .hint(hint),
        Origin::Dep {
            flavour,
            file,
            line,
        } => FlavourError::new(format!("unknown flavour `{name}`"))
            .flavour(flavour.clone())
            .file(file)
            .line(*line)
            .hint(hint),
    }
}

fn check_provides(
    loaded: &[Loaded],
    providers: &BTreeMap<String, Vec<String>>,
    requested: &[String],
    search: &SearchPath,
) -> Result<(), FlavourError> {
    let by_name: HashMap<&str, &Loaded> = loaded
        .iter()
        .map(|l| (l.flavour.name.as_str(), l))
        .collect();
    let provide_site = |flavour: &str, virt: &str| -> Option<(PathBuf, usize)> {
        let l = by_name.get(flavour)?;
        let idx = l.flavour.provides.iter().position(|p| p == virt)?;
        Some((l.flavour.dir.join("element-provides"), l.provide_lines[idx]))
    };

    for (virt, who) in providers {
        if who.len() > 1 {
            let (file, line) = provide_site(&who[1], virt).unwrap_or_default();
            let what = if virt == OPERATING_SYSTEM {
                "only one operating-system flavour can be used"
            } else {
                "only one of them can be used"
            };
            return Err(FlavourError::new(format!(
                "`{virt}` is provided by both `{}` and `{}`; {what}",
                who[0], who[1]
            ))
            .flavour(who[1].clone())
            .file(file)
            .line(line)
            .hint(format!(
                "remove `{}` or `{}` from the flavour list",
                who[0], who[1]
            )));
        }
        // A name both wanted for itself and provided by another flavour: two
        // flavours would fill one role (diskimage-builder refuses this too).
        let provider = &who[0];
        let wanted = if requested.contains(virt) {
            Some("requested on the command line")
        } else if by_name.contains_key(virt.as_str()) {
            Some("pulled in as a dependency")
        } else {
            None
        };
        if let (Some(how), false) = (wanted, provider == virt) {
            let (file, line) = provide_site(provider, virt).unwrap_or_default();
            return Err(FlavourError::new(format!(
                "`{virt}` is {how} but `{provider}` also provides it"
            ))
            .flavour(provider.clone())
            .file(file)
            .line(line)
            .hint(format!("use either `{virt}` or `{provider}`, not both")));
        }
    }

    if !providers.contains_key(OPERATING_SYSTEM) {
        let os: Vec<String> = search
            .all_names()
            .into_iter()
            .filter(|n| provides_os(search, n))
            .map(|n| format!("`{n}`"))
            .collect();
        let hint = if os.is_empty() {
            "add an operating-system flavour such as `debian`".to_string()
        } else {
            format!("add one of {}", os.join(", "))
        };
        return Err(FlavourError::new("no flavour provides `operating-system`").hint(hint));
    }
    Ok(())
}

fn provides_os(search: &SearchPath, name: &str) -> bool {
    search
        .find(name)
        .and_then(|f| read_name_list(name, &f.dir.join("element-provides")).ok())
        .is_some_and(|(p, _)| p.iter().any(|v| v == OPERATING_SYSTEM))
}

/// Depth-first search in discovery order, so the same input always reports the
/// same cycle. Virtual dependencies count as edges to their provider.
fn check_cycles(
    loaded: &[Loaded],
    providers: &BTreeMap<String, Vec<String>>,
) -> Result<(), FlavourError> {
    let index: HashMap<&str, usize> = loaded
        .iter()
        .enumerate()
        .map(|(i, l)| (l.flavour.name.as_str(), i))
        .collect();
    let target = |dep: &str| -> Option<usize> {
        index.get(dep).copied().or_else(|| {
            let p = providers.get(dep)?.first()?;
            index.get(p.as_str()).copied()
        })
    };

    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let mut mark = vec![Mark::New; loaded.len()];
    for root in 0..loaded.len() {
        if mark[root] != Mark::New {
            continue;
        }
        // Explicit stack of (node, next dep index) so deep graphs cannot overflow.
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        mark[root] = Mark::Open;
        while let Some(top) = stack.last_mut() {
            let (node, dep_idx) = *top;
            let deps = &loaded[node].flavour.deps;
            if dep_idx >= deps.len() {
                mark[node] = Mark::Done;
                stack.pop();
                continue;
            }
            top.1 += 1;
            let Some(t) = target(&deps[dep_idx]) else {
                continue;
            };
            match mark[t] {
                Mark::Done => {}
                Mark::New => {
                    mark[t] = Mark::Open;
                    stack.push((t, 0));
                }
                Mark::Open => {
                    let start = stack.iter().position(|(n, _)| *n == t).unwrap_or(0);
                    let mut chain: Vec<&str> = stack[start..]
                        .iter()
                        .map(|(n, _)| loaded[*n].flavour.name.as_str())
                        .collect();
                    chain.push(&loaded[t].flavour.name);
                    let closing = &loaded[node];
                    return Err(FlavourError::new(format!(
                        "dependency cycle: {}",
                        chain.join(" -> ")
                    ))
                    .flavour(closing.flavour.name.clone())
                    .file(closing.flavour.dir.join("element-deps"))
                    .line(closing.dep_lines[dep_idx])
                    .hint("remove one of these dependencies; a flavour cannot need itself"));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tempfile::TempDir;

    /// Writes a flavour with a README.md, and element-deps / element-provides
    /// when non-empty.
    pub(crate) fn flavour(root: &Path, name: &str, deps: &[&str], provides: &[&str]) -> PathBuf {
        let dir = root.join(name);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("README.md"), format!("# {name}\n")).unwrap();
        if !deps.is_empty() {
            fs::write(dir.join("element-deps"), deps.join("\n") + "\n").unwrap();
        }
        if !provides.is_empty() {
            fs::write(dir.join("element-provides"), provides.join("\n") + "\n").unwrap();
        }
        dir
    }

    pub(crate) fn os(root: &Path) {
        flavour(root, "debian", &[], &["operating-system"]);
    }

    fn search(t: &TempDir) -> SearchPath {
        SearchPath::new(&[], t.path().to_path_buf())
    }

    fn req(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn expansion_is_breadth_first_in_discovery_order() {
        let t = TempDir::new().unwrap();
        os(t.path());
        flavour(t.path(), "vm", &["bootloader", "block-device-mbr"], &[]);
        flavour(t.path(), "bootloader", &["grub-tools"], &[]);
        flavour(t.path(), "block-device-mbr", &[], &[]);
        flavour(t.path(), "grub-tools", &[], &[]);
        flavour(t.path(), "extra", &["vm"], &[]);
        let r = resolve(&search(&t), &req(&["debian", "vm", "extra"])).unwrap();
        assert_eq!(
            r.names(),
            req(&[
                "debian",
                "vm",
                "extra",
                "bootloader",
                "block-device-mbr",
                "grub-tools"
            ])
        );
    }

    #[test]
    fn element_deps_ignore_comments_blank_lines_and_whitespace() {
        let t = TempDir::new().unwrap();
        os(t.path());
        let dir = flavour(t.path(), "a", &[], &[]);
        flavour(t.path(), "b", &[], &[]);
        fs::write(
            dir.join("element-deps"),
            "# needs b\n\n   b   \n b # again\n",
        )
        .unwrap();
        let r = resolve(&search(&t), &req(&["a", "debian"])).unwrap();
        assert_eq!(r.get("a").unwrap().deps, req(&["b"]));
        assert_eq!(r.names(), req(&["a", "debian", "b"]));
    }

    #[test]
    fn two_names_on_one_line_are_an_error_with_line() {
        let t = TempDir::new().unwrap();
        os(t.path());
        let dir = flavour(t.path(), "a", &[], &[]);
        fs::write(dir.join("element-deps"), "\nb c\n").unwrap();
        let e = resolve(&search(&t), &req(&["a", "debian"])).unwrap_err();
        assert_eq!(e.line, Some(2));
        assert_eq!(e.file, Some(dir.join("element-deps")));
    }

    #[test]
    fn virtual_dependency_is_satisfied_by_a_provider_found_later() {
        let t = TempDir::new().unwrap();
        flavour(t.path(), "cloud-init", &["operating-system"], &[]);
        os(t.path());
        let r = resolve(&search(&t), &req(&["cloud-init", "debian"])).unwrap();
        assert_eq!(r.names(), req(&["cloud-init", "debian"]));
        assert_eq!(r.provider_of("operating-system").unwrap().name, "debian");
        assert!(r.has("operating-system"));
        assert!(r.has("cloud-init"));
        assert!(!r.has("vm"));
    }

    #[test]
    fn virtual_name_already_provided_is_not_looked_up() {
        let t = TempDir::new().unwrap();
        os(t.path());
        // A real `block-device` flavour exists, but `mbr` already fills the role.
        flavour(t.path(), "block-device", &[], &[]);
        flavour(t.path(), "mbr", &[], &["block-device"]);
        flavour(t.path(), "vm", &["block-device"], &[]);
        let r = resolve(&search(&t), &req(&["debian", "mbr", "vm"])).unwrap();
        assert_eq!(r.names(), req(&["debian", "mbr", "vm"]));
    }

    #[test]
    fn unknown_flavour_on_command_line_has_did_you_mean() {
        let t = TempDir::new().unwrap();
        os(t.path());
        let e = resolve(&search(&t), &req(&["debain"])).unwrap_err();
        assert!(e.message.contains("unknown flavour `debain`"), "{e}");
        assert!(e.message.contains("requested on the command line"), "{e}");
        assert_eq!(e.hint.as_deref(), Some("did you mean `debian`?"));
    }

    #[test]
    fn unknown_dependency_names_the_element_deps_file_and_line() {
        let t = TempDir::new().unwrap();
        os(t.path());
        let dir = flavour(t.path(), "foo", &["debian", "zzz-nothing-like-it"], &[]);
        let e = resolve(&search(&t), &req(&["foo"])).unwrap_err();
        assert_eq!(e.flavour.as_deref(), Some("foo"));
        assert_eq!(e.file, Some(dir.join("element-deps")));
        assert_eq!(e.line, Some(2));
        let shown = e.to_string();
        assert!(
            shown.starts_with(&format!(
                "flavour `foo`, file {} line 2: unknown flavour `zzz-nothing-like-it`",
                dir.join("element-deps").display()
            )),
            "{shown}"
        );
        assert!(e.hint.unwrap().contains("ELEMENTS_PATH"));
    }

    #[test]
    fn cycle_is_reported_as_a_chain_with_the_closing_file() {
        let t = TempDir::new().unwrap();
        os(t.path());
        flavour(t.path(), "a", &["b"], &[]);
        let b = flavour(t.path(), "b", &["c"], &[]);
        let c = flavour(t.path(), "c", &["b"], &[]);
        let e = resolve(&search(&t), &req(&["debian", "a"])).unwrap_err();
        assert!(e.message.contains("b -> c -> b"), "{e}");
        assert_eq!(e.file, Some(c.join("element-deps")));
        assert_eq!(e.line, Some(1));
        let _ = b;
    }

    #[test]
    fn two_flavour_cycle_reads_a_b_a() {
        let t = TempDir::new().unwrap();
        os(t.path());
        flavour(t.path(), "a", &["b"], &[]);
        let b = flavour(t.path(), "b", &["a"], &[]);
        let e = resolve(&search(&t), &req(&["a", "debian"])).unwrap_err();
        assert_eq!(e.message, "dependency cycle: a -> b -> a");
        assert_eq!(e.file, Some(b.join("element-deps")));
    }

    #[test]
    fn cycle_through_a_virtual_name_is_found() {
        let t = TempDir::new().unwrap();
        flavour(t.path(), "myos", &["tools"], &["operating-system"]);
        flavour(t.path(), "tools", &["operating-system"], &[]);
        let e = resolve(&search(&t), &req(&["myos"])).unwrap_err();
        assert_eq!(e.message, "dependency cycle: myos -> tools -> myos");
    }

    #[test]
    fn diamond_is_not_a_cycle() {
        let t = TempDir::new().unwrap();
        os(t.path());
        flavour(t.path(), "a", &["b", "c"], &[]);
        flavour(t.path(), "b", &["d"], &[]);
        flavour(t.path(), "c", &["d"], &[]);
        flavour(t.path(), "d", &["debian"], &[]);
        let r = resolve(&search(&t), &req(&["a"])).unwrap();
        assert_eq!(r.names(), req(&["a", "b", "c", "d", "debian"]));
    }

    #[test]
    fn no_operating_system_is_an_error_suggesting_one() {
        let t = TempDir::new().unwrap();
        os(t.path());
        flavour(t.path(), "vm", &[], &[]);
        let e = resolve(&search(&t), &req(&["vm"])).unwrap_err();
        assert_eq!(e.message, "no flavour provides `operating-system`");
        assert_eq!(e.hint.as_deref(), Some("add one of `debian`"));
    }

    #[test]
    fn no_operating_system_anywhere_suggests_debian() {
        let t = TempDir::new().unwrap();
        flavour(t.path(), "vm", &[], &[]);
        let e = resolve(&search(&t), &req(&["vm"])).unwrap_err();
        assert!(e.hint.unwrap().contains("`debian`"));
    }

    #[test]
    fn two_operating_systems_name_both() {
        let t = TempDir::new().unwrap();
        os(t.path());
        let ubuntu = flavour(t.path(), "ubuntu", &[], &["operating-system"]);
        let e = resolve(&search(&t), &req(&["debian", "ubuntu"])).unwrap_err();
        assert!(
            e.message.contains("`debian`") && e.message.contains("`ubuntu`"),
            "{e}"
        );
        assert_eq!(e.file, Some(ubuntu.join("element-provides")));
    }

    #[test]
    fn requesting_a_name_another_flavour_provides_is_an_error() {
        let t = TempDir::new().unwrap();
        os(t.path());
        flavour(t.path(), "dhcp", &[], &[]);
        flavour(t.path(), "netplan", &[], &["dhcp"]);
        let e = resolve(&search(&t), &req(&["debian", "dhcp", "netplan"])).unwrap_err();
        assert!(
            e.message
                .contains("`dhcp` is requested on the command line"),
            "{e}"
        );
        assert!(e.message.contains("`netplan` also provides it"), "{e}");
        // Same when the provider is seen first and `dhcp` is never loaded.
        let e = resolve(&search(&t), &req(&["debian", "netplan", "dhcp"])).unwrap_err();
        assert!(
            e.message
                .contains("`dhcp` is requested on the command line"),
            "{e}"
        );
    }

    #[test]
    fn depending_on_a_real_flavour_another_provides_is_an_error() {
        let t = TempDir::new().unwrap();
        os(t.path());
        flavour(t.path(), "dhcp", &[], &[]);
        flavour(t.path(), "a", &["dhcp", "netplan"], &[]);
        flavour(t.path(), "netplan", &[], &["dhcp"]);
        let e = resolve(&search(&t), &req(&["debian", "a"])).unwrap_err();
        assert!(
            e.message.contains("`dhcp` is pulled in as a dependency"),
            "{e}"
        );
    }

    #[test]
    fn missing_readme_names_the_directory() {
        let t = TempDir::new().unwrap();
        os(t.path());
        fs::create_dir(t.path().join("bare")).unwrap();
        let e = resolve(&search(&t), &req(&["debian", "bare"])).unwrap_err();
        assert!(
            e.message
                .contains(&t.path().join("bare").display().to_string()),
            "{e}"
        );
        assert!(e.hint.unwrap().contains("README.md"));
    }

    #[test]
    fn readme_rst_is_accepted() {
        let t = TempDir::new().unwrap();
        os(t.path());
        fs::create_dir(t.path().join("legacy")).unwrap();
        fs::write(t.path().join("legacy/README.rst"), "legacy\n======\n").unwrap();
        let r = resolve(&search(&t), &req(&["debian", "legacy"])).unwrap();
        assert!(r.has("legacy"));
    }

    #[test]
    fn shadowing_leaves_a_note() {
        let t = TempDir::new().unwrap();
        let user = t.path().join("user");
        let builtin = t.path().join("builtin");
        os(&user);
        os(&builtin);
        let sp = SearchPath::new(&[user.display().to_string()], builtin.clone());
        let r = resolve(&sp, &req(&["debian"])).unwrap();
        assert_eq!(r.flavours[0].dir, user.join("debian"));
        assert_eq!(
            r.notes,
            vec![format!(
                "flavour `debian` from {} shadows {}",
                user.join("debian").display(),
                builtin.join("debian").display()
            )]
        );
    }

    #[test]
    fn repeated_request_is_loaded_once() {
        let t = TempDir::new().unwrap();
        os(t.path());
        let r = resolve(&search(&t), &req(&["debian", "debian"])).unwrap();
        assert_eq!(r.names(), req(&["debian"]));
    }
}
