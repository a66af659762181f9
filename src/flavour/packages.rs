//! Declarative packages: `package-installs.yaml` / `.json` and `pkg-map`, with
//! the semantics of diskimage-builder's `package-installs` and `pkg-map`
//! elements, evaluated at plan time so a typo fails before any download.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use crate::yaml::{Node, Value};

use super::error::FlavourError;
use super::phase::{Phase, Side};
use super::resolve::{Flavour, Resolved};
use super::search::did_you_mean;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageRequest {
    /// Already mapped through the flavour's `pkg-map`.
    pub name: String,
    pub phase: Phase,
    pub uninstall: bool,
    pub flavour: String,
}

/// What the packages are for: `pkg-map` keys and `arch` / `when` filters.
pub struct Target<'a> {
    pub distro: &'a str,
    pub release: &'a str,
    /// e.g. "debian" for both debian and ubuntu, as pkg-map's `family`.
    pub family: &'a str,
    /// diskimage-builder's `ARCH` spelling (`amd64`, `arm64`).
    pub arch: &'a str,
    /// The build environment (`DIB_*` and environment.d results).
    pub env: &'a dyn Fn(&str) -> Option<String>,
}

pub fn collect_packages(
    resolved: &Resolved,
    target: &Target,
) -> Result<Vec<PackageRequest>, FlavourError> {
    let mut out = Vec::new();
    for flavour in &resolved.flavours {
        let mut wanted = Vec::new();
        // diskimage-builder reads the .json file before the .yaml one.
        for file in ["package-installs.json", "package-installs.yaml"] {
            let path = flavour.dir.join(file);
            if path.is_file() {
                let doc = load_document(&flavour.name, &path)?;
                let ctx = Ctx {
                    flavour,
                    path: &path,
                    target,
                };
                if let Some(doc) = doc {
                    ctx.requests(&doc, &mut wanted)?;
                }
            }
        }
        if wanted.is_empty() {
            continue;
        }
        let map = PkgMap::load(flavour, target)?;
        for (name, phase, uninstall) in wanted {
            for mapped in map.apply(&name) {
                out.push(PackageRequest {
                    name: mapped,
                    phase,
                    uninstall,
                    flavour: flavour.name.clone(),
                });
            }
        }
    }
    Ok(out)
}

// ---- YAML ------------------------------------------------------------------

fn parse_yaml(flavour: &str, path: &Path, text: &str) -> Result<Option<Node>, FlavourError> {
    let mut docs = crate::yaml::load(text).map_err(|e| {
        let message = match e.column {
            Some(col) => format!("invalid YAML at column {col}: {}", e.message),
            None => e.message,
        };
        FlavourError::new(message)
            .flavour(flavour)
            .file(path)
            .line(e.line)
    })?;
    if docs.len() > 1 {
        let line = docs[1].line;
        return Err(FlavourError::new("more than one YAML document")
            .flavour(flavour)
            .file(path)
            .line(line)
            .hint("remove the `---` separator; package-installs is a single mapping"));
    }
    Ok(docs.pop())
}

fn from_json(v: serde_json::Value) -> Node {
    use serde_json::Value as J;
    let value = match v {
        J::Null => Value::Null,
        J::Bool(b) => Value::Scalar(b.to_string()),
        J::Number(n) => Value::Scalar(n.to_string()),
        J::String(s) => Value::Scalar(s),
        J::Array(items) => Value::Seq(items.into_iter().map(from_json).collect()),
        J::Object(map) => Value::Map(
            map.into_iter()
                .map(|(k, v)| {
                    (
                        Node {
                            value: Value::Scalar(k),
                            line: 0,
                        },
                        from_json(v),
                    )
                })
                .collect(),
        ),
    };
    Node { value, line: 0 }
}

fn json_error(flavour: &str, path: &Path, e: &serde_json::Error) -> FlavourError {
    FlavourError::new(format!("invalid JSON at column {}: {e}", e.column()))
        .flavour(flavour)
        .file(path)
        .line(e.line())
}

/// JSON is read as YAML (a superset) to keep line numbers, but judged by a JSON
/// parser so its errors read like JSON errors.
fn load_document(flavour: &str, path: &Path) -> Result<Option<Node>, FlavourError> {
    let text = fs::read_to_string(path)
        .map_err(|e| FlavourError::io("read", path, &e).flavour(flavour))?;
    if path.extension().is_some_and(|e| e == "json") {
        // diskimage-builder fell back to YAML for a broken .json file, which turns
        // a JSON typo into a baffling YAML meaning; kiln reports the JSON error.
        let v = serde_json::from_str(&text).map_err(|e| json_error(flavour, path, &e))?;
        return Ok(parse_yaml(flavour, path, &text).unwrap_or_else(|_| Some(from_json(v))));
    }
    parse_yaml(flavour, path, &text)
}

// ---- package-installs semantics --------------------------------------------

const KEYS: [&str; 8] = [
    "phase",
    "uninstall",
    "build-only",
    "arch",
    "not-arch",
    "when",
    "installtype",
    "dib_python_version",
];

struct Ctx<'a> {
    flavour: &'a Flavour,
    path: &'a Path,
    target: &'a Target<'a>,
}

impl Ctx<'_> {
    fn err(&self, line: usize, message: String) -> FlavourError {
        FlavourError::new(message)
            .flavour(self.flavour.name.clone())
            .file(self.path)
            .line(line)
    }

    fn requests(
        &self,
        doc: &Node,
        out: &mut Vec<(String, Phase, bool)>,
    ) -> Result<(), FlavourError> {
        if doc.is_null() {
            return Ok(());
        }
        let Value::Map(pairs) = &doc.value else {
            return Err(self
                .err(
                    doc.line,
                    format!(
                        "expected a mapping of package name to options, found {}",
                        doc.describe()
                    ),
                )
                .hint("write one `package-name:` per line, options indented below it"));
        };
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (key, value) in pairs {
            let name = match key.text() {
                Some(name) if !name.trim().is_empty() => name.trim(),
                _ => return Err(self.err(key.line, "a package name must be a plain word".into())),
            };
            if let Some(first) = seen.insert(name, key.line) {
                return Err(self.err(
                    key.line,
                    format!("package `{name}` is listed twice (first at line {first})"),
                ));
            }
            let entries: Vec<&Node> = match &value.value {
                Value::Seq(items) => items.iter().collect(),
                _ => vec![value],
            };
            for entry in entries {
                self.request(name, key.line, entry, out)?;
            }
        }
        Ok(())
    }

    fn request(
        &self,
        name: &str,
        name_line: usize,
        opts: &Node,
        out: &mut Vec<(String, Phase, bool)>,
    ) -> Result<(), FlavourError> {
        let pairs: &[(Node, Node)] = match &opts.value {
            _ if opts.is_null() => &[],
            Value::Map(pairs) => pairs,
            _ => {
                return Err(self.err(
                    opts.line.max(name_line),
                    format!(
                        "options of `{name}` must be a mapping (or a list of them), found {}",
                        opts.describe()
                    ),
                ))
            }
        };
        let mut phase = Phase::Install;
        let (mut uninstall, mut build_only) = (false, false);
        let (mut arch, mut not_arch) = (None, None);
        let mut keep = true;
        for (k, v) in pairs {
            let key = k.text().unwrap_or("");
            match key {
                "phase" => phase = self.phase(v)?,
                "uninstall" => uninstall = self.flag(key, v)?,
                "build-only" => build_only = self.flag(key, v)?,
                "arch" => arch = Some(self.words(key, v)?),
                "not-arch" => not_arch = Some(self.words(key, v)?),
                "when" => keep &= self.when(v)?,
                "installtype" => keep &= self.installtype_matches(v),
                "dib_python_version" => keep &= self.python_matches(v),
                _ => {
                    let mut e = self.err(
                        k.line,
                        format!("unknown option `{key}` for package `{name}`"),
                    );
                    e = match did_you_mean(key, KEYS) {
                        Some(close) => e.hint(format!("did you mean `{close}`?")),
                        None => e.hint(format!("known options: {}", KEYS.join(", "))),
                    };
                    return Err(e);
                }
            }
        }
        if arch.is_some() && not_arch.is_some() {
            return Err(self.err(
                name_line,
                format!("package `{name}` has both `arch` and `not-arch`; use one"),
            ));
        }
        keep &= arch_matches(self.target.arch, arch.as_deref(), not_arch.as_deref());
        if !keep {
            return Ok(());
        }
        // `build-only`: installed for the build, removed before the image is finished.
        if build_only || !uninstall {
            out.push((name.to_owned(), phase, false));
        }
        if build_only || uninstall {
            out.push((name.to_owned(), phase, true));
        }
        Ok(())
    }

    fn phase(&self, v: &Node) -> Result<Phase, FlavourError> {
        let text = v.text().unwrap_or("");
        let allowed: Vec<&str> = Phase::BUILD
            .into_iter()
            .filter(|p| p.side() == Side::Inside)
            .map(Phase::dir_name)
            .collect();
        match Phase::from_dir_name(text) {
            Some(p) if p.side() == Side::Inside && p != Phase::FirstBoot => Ok(p),
            Some(p) => Err(self
                .err(
                    v.line,
                    format!(
                        "packages cannot be installed in {p}: it does not run inside the image"
                    ),
                )
                .hint(format!("use one of {}", allowed.join(", ")))),
            None if text.is_empty() => Err(self
                .err(v.line, "`phase` needs a phase name".into())
                .hint(format!("use one of {}", allowed.join(", ")))),
            None => {
                let hint = match did_you_mean(text, allowed.iter().copied()) {
                    Some(close) => format!("did you mean `{close}`?"),
                    None => format!("use one of {}", allowed.join(", ")),
                };
                Err(self
                    .err(v.line, format!("unknown phase `{text}`"))
                    .hint(hint))
            }
        }
    }

    /// diskimage-builder tests only that the key is present, so an empty value
    /// counts as true; an explicit false is honoured.
    fn flag(&self, key: &str, v: &Node) -> Result<bool, FlavourError> {
        if v.is_null() {
            return Ok(true);
        }
        match v.text() {
            Some("true" | "True" | "TRUE" | "yes" | "Yes" | "YES" | "on" | "On" | "ON") => Ok(true),
            Some("false" | "False" | "FALSE" | "no" | "No" | "NO" | "off" | "Off" | "OFF") => {
                Ok(false)
            }
            _ => Err(self.err(v.line, format!("`{key}` must be true or false"))),
        }
    }

    /// A comma separated string or a list: `arch: amd64, arm64`.
    fn words(&self, key: &str, v: &Node) -> Result<Vec<String>, FlavourError> {
        let texts: Vec<&str> = match &v.value {
            Value::Scalar(text) => vec![text.as_str()],
            Value::Seq(items) => items.iter().filter_map(Node::text).collect(),
            Value::Null | Value::Map(_) => vec![],
        };
        let words: Vec<String> = texts
            .iter()
            .flat_map(|t| t.split(','))
            .map(str::trim)
            .filter(|w| !w.is_empty())
            .map(str::to_owned)
            .collect();
        if words.is_empty() {
            return Err(self.err(
                v.line,
                format!("`{key}` needs a comma separated list of architectures"),
            ));
        }
        Ok(words)
    }

    /// `when: VAR = value` / `VAR != value`, or a list of them that must all hold.
    fn when(&self, v: &Node) -> Result<bool, FlavourError> {
        let conditions: Vec<&Node> = match &v.value {
            Value::Seq(items) => items.iter().collect(),
            _ => vec![v],
        };
        let mut all = true;
        for c in conditions {
            let Some((var, negate, want)) = c.text().and_then(parse_condition) else {
                return Err(self
                    .err(
                        c.line,
                        format!("malformed `when`: {:?}", c.text().unwrap_or("")),
                    )
                    .hint("write `when: VARIABLE = value` or `when: VARIABLE != value`"));
            };
            // Unset counts as empty, so `when: DIB_FEATURE != 1` holds by default.
            let have = (self.target.env)(var).unwrap_or_default();
            all &= (have == want) != negate;
        }
        Ok(all)
    }

    /// diskimage-builder's installtype: `DIB_INSTALLTYPE_<flavour>` or
    /// `DIB_DEFAULT_INSTALLTYPE`, default `source`.
    fn installtype_matches(&self, v: &Node) -> bool {
        let env = self.target.env;
        let own = format!("DIB_INSTALLTYPE_{}", self.flavour.name.replace('-', "_"));
        let current = env(&own)
            .or_else(|| env("DIB_DEFAULT_INSTALLTYPE"))
            .unwrap_or_else(|| "source".into());
        v.is_null() || v.text() == Some(current.as_str())
    }

    /// kiln targets Python 3 systems; `DIB_PYTHON_VERSION` may still say otherwise.
    fn python_matches(&self, v: &Node) -> bool {
        let current = (self.target.env)("DIB_PYTHON_VERSION").unwrap_or_else(|| "3".into());
        v.is_null()
            || v.text()
                .is_some_and(|t| t.trim() == current || t.trim().is_empty())
    }
}

fn parse_condition(s: &str) -> Option<(&str, bool, &str)> {
    let s = s.trim_start();
    let var_len = s.len()
        - s.trim_start_matches(|c: char| c.is_alphanumeric() || c == '_')
            .len();
    if var_len == 0 {
        return None;
    }
    let (var, rest) = s.split_at(var_len);
    let rest = rest.trim_start();
    let (negate, value) = if let Some(v) = rest.strip_prefix("!=") {
        (true, v)
    } else {
        (false, rest.strip_prefix('=')?)
    };
    Some((var, negate, value.trim()))
}

/// `!name` in `arch` excludes like `not-arch` (a kiln extension); an `arch` list
/// with only exclusions allows every other architecture.
fn arch_matches(current: &str, arch: Option<&[String]>, not_arch: Option<&[String]>) -> bool {
    if let Some(list) = not_arch {
        return !list.iter().any(|a| a == current);
    }
    let Some(list) = arch else { return true };
    if list.iter().any(|a| a.strip_prefix('!') == Some(current)) {
        return false;
    }
    let mut included = list.iter().filter(|a| !a.starts_with('!')).peekable();
    included.peek().is_none() || included.any(|a| a == current)
}

// ---- pkg-map --------------------------------------------------------------

/// The flavour's own name translations for this target, most specific winning.
struct PkgMap {
    names: HashMap<String, String>,
}

impl PkgMap {
    fn load(flavour: &Flavour, target: &Target) -> Result<PkgMap, FlavourError> {
        let path = flavour.dir.join("pkg-map");
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(PkgMap {
                    names: HashMap::new(),
                })
            }
            Err(e) => return Err(FlavourError::io("read", &path, &e).flavour(flavour.name.clone())),
        };
        let err = |msg: String| {
            FlavourError::new(msg)
                .flavour(flavour.name.clone())
                .file(&path)
        };
        let root: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| json_error(&flavour.name, &path, &e))?;
        let Some(root) = root.as_object() else {
            return Err(err("pkg-map must be a JSON object".into()));
        };
        for key in root.keys() {
            if !["default", "family", "distro", "release"].contains(&key.as_str()) {
                return Err(err(format!("unknown pkg-map section `{key}`"))
                    .hint("sections are `release`, `distro`, `family` and `default`"));
            }
        }
        // Check every table, not only this target's, so a mistake shows on any build.
        let table =
            |v: &serde_json::Value, at: &str| -> Result<HashMap<String, String>, FlavourError> {
                let obj = v
                    .as_object()
                    .ok_or_else(|| err(format!("`{at}` must be an object of package names")))?;
                obj.iter()
                    .map(|(k, v)| match v.as_str() {
                        Some(s) => Ok((k.clone(), s.to_owned())),
                        None => Err(err(format!(
                            "`{at}.{k}` must be a string (\"\" for no package)"
                        ))),
                    })
                    .collect()
            };
        let nested =
            |section: &str| -> Result<HashMap<String, HashMap<String, String>>, FlavourError> {
                let Some(v) = root.get(section) else {
                    return Ok(HashMap::new());
                };
                let obj = v
                    .as_object()
                    .ok_or_else(|| err(format!("`{section}` must be an object")))?;
                obj.iter()
                    .map(|(k, v)| Ok((k.clone(), table(v, &format!("{section}.{k}"))?)))
                    .collect()
            };

        let mut names = match root.get("default") {
            Some(v) => table(v, "default")?,
            None => HashMap::new(),
        };
        let family = nested("family")?;
        let distro = nested("distro")?;
        let mut release = HashMap::new();
        if let Some(v) = root.get("release") {
            let obj = v
                .as_object()
                .ok_or_else(|| err("`release` must be an object".into()))?;
            for (d, releases) in obj {
                let releases = releases
                    .as_object()
                    .ok_or_else(|| err(format!("`release.{d}` must be an object of releases")))?;
                for (r, t) in releases {
                    release.insert(
                        (d.clone(), r.clone()),
                        table(t, &format!("release.{d}.{r}"))?,
                    );
                }
            }
        }
        for layer in [
            family.get(target.family),
            distro.get(target.distro),
            release.get(&(target.distro.to_owned(), target.release.to_owned())),
        ]
        .into_iter()
        .flatten()
        {
            names.extend(layer.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        Ok(PkgMap { names })
    }

    /// Unmapped names pass through; "" drops the package; a value naming
    /// several packages expands, as the unquoted shell word did in diskimage-builder.
    fn apply(&self, name: &str) -> Vec<String> {
        match self.names.get(name) {
            Some(mapped) => mapped.split_whitespace().map(str::to_owned).collect(),
            None => vec![name.to_owned()],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flavour::resolve::resolve;
    use crate::flavour::resolve::tests::{flavour, os};
    use crate::flavour::search::SearchPath;
    use tempfile::TempDir;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn target<'a>(env: &'a dyn Fn(&str) -> Option<String>) -> Target<'a> {
        Target {
            distro: "debian",
            release: "bookworm",
            family: "debian",
            arch: "amd64",
            env,
        }
    }

    /// Flavour `a` (plus `debian`) with the given files.
    fn setup(files: &[(&str, &str)]) -> (TempDir, Resolved) {
        let t = TempDir::new().unwrap();
        os(t.path());
        let dir = flavour(t.path(), "a", &[], &[]);
        for (name, text) in files {
            fs::write(dir.join(name), text).unwrap();
        }
        let sp = SearchPath::new(&[], t.path().to_path_buf());
        let r = resolve(&sp, &["debian".to_string(), "a".to_string()]).unwrap();
        (t, r)
    }

    fn collect(
        files: &[(&str, &str)],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Vec<PackageRequest>, FlavourError> {
        let (_t, r) = setup(files);
        collect_packages(&r, &target(env))
    }

    fn short(reqs: &[PackageRequest]) -> Vec<String> {
        reqs.iter()
            .map(|r| {
                format!(
                    "{}{}@{}",
                    if r.uninstall { "-" } else { "" },
                    r.name,
                    r.phase
                )
            })
            .collect()
    }

    #[test]
    fn plain_names_default_to_install_d() {
        let reqs = collect(
            &[("package-installs.yaml", "libxml2:\ngrub2: ~\n")],
            &no_env,
        )
        .unwrap();
        assert_eq!(short(&reqs), vec!["libxml2@install.d", "grub2@install.d"]);
        assert_eq!(reqs[0].flavour, "a");
    }

    #[test]
    fn phase_uninstall_and_build_only() {
        let yaml = "grub2:\n  phase: pre-install.d\nnetworkmanager:\n  uninstall: True\n\
                    libssl-dev:\n  build-only: true\nkept:\n  uninstall: false\n";
        let reqs = collect(&[("package-installs.yaml", yaml)], &no_env).unwrap();
        assert_eq!(
            short(&reqs),
            vec![
                "grub2@pre-install.d",
                "-networkmanager@install.d",
                "libssl-dev@install.d",
                "-libssl-dev@install.d",
                "kept@install.d"
            ]
        );
    }

    #[test]
    fn arch_not_arch_and_negated_arch_filter() {
        let yaml = "linux-image-amd64:\n  arch: amd64\nlshw:\n  arch: ppc64, ppc64le\n\
                    dmidecode:\n  not-arch: ppc64, amd64\nefi:\n  arch: \"!arm64\"\nnoefi:\n  arch: \"!amd64\"\n\
                    both:\n  arch: [arm64, amd64]\n";
        let reqs = collect(&[("package-installs.yaml", yaml)], &no_env).unwrap();
        assert_eq!(
            short(&reqs),
            vec![
                "linux-image-amd64@install.d",
                "efi@install.d",
                "both@install.d"
            ]
        );
    }

    #[test]
    fn arch_and_not_arch_together_are_an_error() {
        let e = collect(
            &[(
                "package-installs.yaml",
                "x:\n  arch: amd64\n  not-arch: arm64\n",
            )],
            &no_env,
        )
        .unwrap_err();
        assert_eq!(e.line, Some(1));
        assert!(e.message.contains("both `arch` and `not-arch`"));
    }

    #[test]
    fn when_conditions_use_the_environment_and_unset_is_empty() {
        let env = |k: &str| match k {
            "DIB_USE_A" => Some("1".to_string()),
            "DIB_FLAVOUR_X" => Some("big one".to_string()),
            _ => None,
        };
        let yaml = "package-a:\n  when: DIB_USE_A = 1\npackage-b:\n  when: DIB_USE_A != 1\n\
                    package-c:\n  when: DIB_UNSET != 1\npackage-d:\n  when: DIB_UNSET=\n\
                    package-e:\n  when:\n    - DIB_USE_A=1\n    - DIB_FLAVOUR_X = big one\n\
                    package-f:\n  when: [DIB_USE_A=1, DIB_UNSET=1]\n";
        let reqs = collect(&[("package-installs.yaml", yaml)], &env).unwrap();
        assert_eq!(
            short(&reqs),
            vec![
                "package-a@install.d",
                "package-c@install.d",
                "package-d@install.d",
                "package-e@install.d"
            ]
        );
    }

    #[test]
    fn malformed_when_names_its_line() {
        let e = collect(
            &[("package-installs.yaml", "a:\n  when: just words\n")],
            &no_env,
        )
        .unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("malformed `when`"), "{e}");
    }

    #[test]
    fn list_of_option_mappings_gives_one_request_each() {
        let yaml =
            "tool:\n  - phase: pre-install.d\n  - phase: post-install.d\n    uninstall: true\n";
        let reqs = collect(&[("package-installs.yaml", yaml)], &no_env).unwrap();
        assert_eq!(
            short(&reqs),
            vec!["tool@pre-install.d", "-tool@post-install.d"]
        );
    }

    #[test]
    fn installtype_and_python_version_follow_diskimage_builder() {
        let yaml = "src-only:\n  installtype: source\npkg-only:\n  installtype: package\n\
                    python-dev:\n  dib_python_version: 2\npython3-dev:\n  dib_python_version: 3\n";
        let reqs = collect(&[("package-installs.yaml", yaml)], &no_env).unwrap();
        assert_eq!(
            short(&reqs),
            vec!["src-only@install.d", "python3-dev@install.d"]
        );
        let env = |k: &str| (k == "DIB_INSTALLTYPE_a").then(|| "package".to_string());
        let reqs = collect(&[("package-installs.yaml", yaml)], &env).unwrap();
        assert_eq!(
            short(&reqs),
            vec!["pkg-only@install.d", "python3-dev@install.d"]
        );
    }

    #[test]
    fn unknown_option_names_key_and_line() {
        let e = collect(
            &[(
                "package-installs.yaml",
                "a:\nb:\n  phase: install.d\n  uninstal: true\n",
            )],
            &no_env,
        )
        .unwrap_err();
        assert_eq!(e.line, Some(4));
        assert!(e.message.contains("unknown option `uninstal`"), "{e}");
        assert_eq!(e.hint.as_deref(), Some("did you mean `uninstall`?"));
        assert!(
            e.to_string().contains("package-installs.yaml line 4"),
            "{e}"
        );
    }

    #[test]
    fn unknown_phase_is_an_error() {
        let e = collect(
            &[("package-installs.yaml", "a:\n  phase: instal.d\n")],
            &no_env,
        )
        .unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("unknown phase `instal.d`"));
        assert_eq!(e.hint.as_deref(), Some("did you mean `install.d`?"));
        let e = collect(
            &[("package-installs.yaml", "a:\n  phase: root.d\n")],
            &no_env,
        )
        .unwrap_err();
        assert!(e.message.contains("does not run inside the image"), "{e}");
    }

    #[test]
    fn malformed_yaml_reports_line_and_column() {
        let e = collect(
            &[("package-installs.yaml", "a:\n  phase: install.d\n b: [\n")],
            &no_env,
        )
        .unwrap_err();
        assert!(e.line.is_some(), "{e}");
        assert!(e.message.starts_with("invalid YAML at column"), "{e}");
        assert!(e.file.unwrap().ends_with("a/package-installs.yaml"));
    }

    #[test]
    fn a_top_level_list_is_refused() {
        let e = collect(
            &[("package-installs.yaml", "# pkgs\n- vim\n- curl\n")],
            &no_env,
        )
        .unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("expected a mapping"), "{e}");
    }

    #[test]
    fn duplicate_package_names_the_first_line() {
        let e = collect(&[("package-installs.yaml", "vim:\ncurl:\nvim:\n")], &no_env).unwrap_err();
        assert_eq!(e.line, Some(3));
        assert!(e.message.contains("first at line 1"));
    }

    #[test]
    fn empty_file_means_no_packages() {
        assert!(
            collect(&[("package-installs.yaml", "# nothing yet\n")], &no_env)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn json_file_is_read_before_yaml() {
        let json = "{\n  \"libxml2\": null,\n  \"grub2\": {\"phase\": \"pre-install.d\"},\n  \"nm\": {\"uninstall\": true}\n}\n";
        let reqs = collect(
            &[
                ("package-installs.json", json),
                ("package-installs.yaml", "vim:\n"),
            ],
            &no_env,
        )
        .unwrap();
        assert_eq!(
            short(&reqs),
            vec![
                "libxml2@install.d",
                "grub2@pre-install.d",
                "-nm@install.d",
                "vim@install.d"
            ]
        );
    }

    #[test]
    fn malformed_json_reports_json_line() {
        let e = collect(
            &[(
                "package-installs.json",
                "{\n  \"a\": null,\n  \"b\": {\"phase\": }\n}\n",
            )],
            &no_env,
        )
        .unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.message.starts_with("invalid JSON"), "{e}");
    }

    #[test]
    fn pkg_map_precedence_is_release_distro_family_default() {
        let map = r#"{
            "default": {"p1": "d1", "p2": "d2", "p3": "d3", "p4": "d4"},
            "family": {"debian": {"p1": "f1", "p2": "f2", "p3": "f3"}, "redhat": {"p4": "rh"}},
            "distro": {"debian": {"p1": "s1", "p2": "s2"}, "ubuntu": {"p3": "u"}},
            "release": {"debian": {"bookworm": {"p1": "r1"}, "trixie": {"p2": "t"}}}
        }"#;
        let yaml = "p1:\np2:\np3:\np4:\np5:\n";
        let reqs = collect(
            &[("package-installs.yaml", yaml), ("pkg-map", map)],
            &no_env,
        )
        .unwrap();
        let names: Vec<&str> = reqs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, vec!["r1", "s2", "f3", "d4", "p5"]);
    }

    #[test]
    fn pkg_map_empty_string_drops_and_spaces_expand() {
        let map = r#"{"distro": {"debian": {"gone": "", "pair": "a-dev  b-dev"}}}"#;
        let yaml = "gone:\npair:\n  phase: pre-install.d\n";
        let reqs = collect(
            &[("package-installs.yaml", yaml), ("pkg-map", map)],
            &no_env,
        )
        .unwrap();
        assert_eq!(
            short(&reqs),
            vec!["a-dev@pre-install.d", "b-dev@pre-install.d"]
        );
    }

    #[test]
    fn pkg_map_of_another_flavour_does_not_apply() {
        let t = TempDir::new().unwrap();
        os(t.path());
        let a = flavour(t.path(), "a", &[], &[]);
        let b = flavour(t.path(), "b", &[], &[]);
        fs::write(a.join("package-installs.yaml"), "vim:\n").unwrap();
        fs::write(b.join("pkg-map"), r#"{"default": {"vim": "neovim"}}"#).unwrap();
        let sp = SearchPath::new(&[], t.path().to_path_buf());
        let r = resolve(&sp, &["debian".into(), "a".into(), "b".into()]).unwrap();
        let reqs = collect_packages(&r, &target(&no_env)).unwrap();
        assert_eq!(reqs[0].name, "vim");
    }

    #[test]
    fn malformed_pkg_map_reports_line() {
        let e = collect(
            &[
                ("package-installs.yaml", "vim:\n"),
                ("pkg-map", "{\n  \"default\": {\n    \"vim\" \"x\"\n}\n"),
            ],
            &no_env,
        )
        .unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.file.unwrap().ends_with("a/pkg-map"));
    }

    #[test]
    fn pkg_map_wrong_shapes_are_errors() {
        let bad = [
            r#"{"defaults": {}}"#,
            r#"{"default": {"vim": 1}}"#,
            r#"{"distro": {"debian": ["vim"]}}"#,
            r#"{"release": {"debian": {"bookworm": "x"}}}"#,
            r#"[]"#,
        ];
        for map in bad {
            assert!(
                collect(
                    &[("package-installs.yaml", "vim:\n"), ("pkg-map", map)],
                    &no_env
                )
                .is_err(),
                "{map}"
            );
        }
    }

    #[test]
    fn condition_parsing() {
        assert_eq!(parse_condition("A=1"), Some(("A", false, "1")));
        assert_eq!(parse_condition(" A != x y "), Some(("A", true, "x y")));
        assert_eq!(parse_condition("A"), None);
        assert_eq!(parse_condition("= 1"), None);
    }
}
