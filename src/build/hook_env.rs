//! The environment of every hook, in one place: diskimage-builder's core
//! variables (what its elements read, often under `set -u`), kiln's own, and what
//! differs between the host side and the inside of the image.

use super::outputs;
use super::plan::Plan;
use super::workdir::WorkDir;
use crate::flavour::{Phase, Side};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Inside the image the hooks directory is here (diskimage-builder's path).
pub const IN_TARGET: &str = "/tmp/in_target.d";

/// Host paths, and what only makes sense on the host: host-side hooks only. Inside
/// the image they would mean nothing and would tell a hook where the user's files are.
const HOST_ONLY: [&str; 11] = [
    "TMP_BUILD_DIR",
    "TMP_IMAGE_DIR",
    "TMP_MOUNT_PATH",
    "KILN_USER_HOME",
    "KILN_APT_CACHE",
    "DIB_IMAGE_CACHE",
    "DIB_PYTHON_EXEC",
    "DIB_ARGS",
    "DIB_ENV",
    "_LIB",
    ELEMENT_ARRAY_FN,
];

/// diskimage-builder exports this function to host-side hooks
/// (`eval declare -A a=($(get_image_element_array))`); bash imports a function
/// from a variable of this name.
const ELEMENT_ARRAY_FN: &str = "BASH_FUNC_get_image_element_array%%";

/// The environment.d file that carries `--install-type`, written where
/// diskimage-builder writes it, so a caller's DIB_DEFAULT_INSTALLTYPE still wins
/// over the default.
pub const INSTALL_TYPE_FILE: &str = "11-dib-install-type.bash";

pub struct HookEnv {
    /// Every variable with its host-side value.
    vars: Vec<(String, String)>,
    hooks: PathBuf,
    root: PathBuf,
    home: PathBuf,
    /// First on host-side hooks' PATH: kiln's `sudo`.
    host_bin: PathBuf,
}

impl HookEnv {
    /// Also creates DIB_IMAGE_CACHE, as diskimage-builder does before any hook.
    pub fn new(plan: &Plan, work: &WorkDir, apt_cache: &Path) -> Result<HookEnv> {
        let c = &plan.config;
        let ids = &plan.ids;
        let mut env: Vec<(String, String)> = Vec::new();
        let mut set = |k: &str, v: String| {
            env.retain(|(ek, _)| ek != k);
            env.push((k.to_string(), v));
        };
        // The caller's, then kiln's defaults where the caller set nothing.
        if !c.clear_env {
            for (k, v) in c.vars.for_hooks() {
                set(k, v.into());
            }
            for k in ["http_proxy", "https_proxy", "no_proxy", "SOURCE_DATE_EPOCH"] {
                if let Some(v) = c.vars.get(k) {
                    set(k, v.into());
                }
            }
        }
        let caller = |k: &str| {
            if c.clear_env {
                None
            } else {
                c.vars.get(k).map(str::to_string)
            }
        };
        set(
            "DIB_INIT_SYSTEM",
            caller("DIB_INIT_SYSTEM").unwrap_or_else(|| "systemd".into()),
        );
        set(
            "DIB_ENV",
            if c.clear_env {
                String::new()
            } else {
                declare_p(c.vars.for_hooks().filter(|(k, _)| k.starts_with("DIB_")))
            },
        );
        // diskimage-builder saves the image's manifests to `IMAGE_NAME.d/` in the
        // caller's directory; kiln's hooks run elsewhere, so they save into the
        // build and kiln moves the result beside the outputs (outputs::write_all).
        if caller("DIB_MANIFEST_SAVE_DIR").is_none() {
            set(
                "DIB_MANIFEST_SAVE_DIR",
                format!(
                    "{}/",
                    work.saved().join(outputs::saved_dir_name(c)).display()
                ),
            );
        }
        if caller("DIB_DEBIAN_SECURITY_MIRROR").is_none() {
            if let Some(m) = crate::build::mirror::security_from_host_apt() {
                set("DIB_DEBIAN_SECURITY_MIRROR", m);
            }
        }
        set(
            "DIB_PYTHON_EXEC",
            caller("DIB_PYTHON_EXEC").unwrap_or_else(|| python_exec(plan)),
        );

        let image_cache = image_cache(c)?;
        std::fs::create_dir_all(&image_cache)
            .with_context(|| format!("creating DIB_IMAGE_CACHE {}", image_cache.display()))?;

        let elements: Vec<String> = plan.resolved.names();
        let yaml = serde_json::Value::Object(
            plan.resolved
                .flavours
                .iter()
                .map(|f| {
                    (
                        f.name.clone(),
                        serde_json::Value::String(f.dir.display().to_string()),
                    )
                })
                .collect(),
        );
        let array: Vec<String> = plan
            .resolved
            .flavours
            .iter()
            .map(|f| format!("[{}]={}", f.name, f.dir.display()))
            .collect();
        // diskimage-builder's meaning: the search path, first wins (the caller's entries, then the built-in flavours).
        let paths: Vec<String> = plan
            .search_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        let fixed = [
            (
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            ),
            ("LANG", "C.UTF-8".into()),
            ("DEBIAN_FRONTEND", "noninteractive".into()),
            ("IMAGE_NAME", c.output.display().to_string()),
            ("IMAGE_ELEMENT", elements.join(" ")),
            ("IMAGE_ELEMENT_YAML", yaml.to_string()),
            (
                ELEMENT_ARRAY_FN,
                format!("() {{ echo {}; }}", shell_quote(&array.join(" "))),
            ),
            ("ELEMENTS_PATH", paths.join(":")),
            ("ARCH", c.arch.clone()),
            ("DISTRO_NAME", plan.distro.clone()),
            ("DIB_RELEASE", c.release.clone()),
            ("DIB_DISTRIBUTION_MIRROR", c.mirror.clone()),
            ("DIB_ROOT_LABEL", c.root_label.clone()),
            ("DIB_DEBUG_TRACE", c.debug_trace.to_string()),
            ("DIB_OFFLINE", if c.offline { "1" } else { "" }.into()),
            ("DIB_IMAGE_CACHE", image_cache.display().to_string()),
            ("DIB_ARGS", c.argv.join(" ")),
            ("_LIB", c.dib_lib.display().to_string()),
            ("FS_TYPE", c.fs_type.as_str().into()),
            ("TMP_BUILD_DIR", work.path.display().to_string()),
            ("TMP_IMAGE_DIR", work.image().display().to_string()),
            ("TMP_MOUNT_PATH", work.root().display().to_string()),
            ("KILN_PACKAGES", plan.bootstrap_packages.join(" ")),
            ("KILN_APT_CACHE", apt_cache.display().to_string()),
            ("KILN_ROOT_UUID", ids.root.clone()),
            (
                "KILN_ESP_UUID",
                if plan.layout.has_esp() {
                    ids.esp.clone()
                } else {
                    String::new()
                },
            ),
            ("KILN_ROOT_FSTYPE", c.fs_type.as_str().into()),
            ("KILN_BLOCK_DEVICE_LAYOUT", plan.layout.as_str().into()),
            ("KILN_USER_HOME", std::env::var("HOME").unwrap_or_default()),
            // 1 when the build has no subordinate ids: owners are recorded
            // (sandbox::owners), and only root's id exists for mount options.
            (
                "KILN_RECORDED_OWNERS",
                if plan.maps.has_range() { "0" } else { "1" }.into(),
            ),
        ];
        for (k, v) in fixed {
            set(k, v);
        }
        Ok(HookEnv {
            vars: env,
            hooks: work.hooks(),
            root: work.root(),
            // As under diskimage-builder: host-side hooks read the caller's ~/.ssh
            // (devuser) and write with the caller's ids (root inside is the caller).
            home: std::env::var_os("HOME")
                .filter(|h| !h.is_empty() && Path::new(h).is_dir())
                .map(PathBuf::from)
                .unwrap_or_else(|| work.home()),
            host_bin: c.dib_lib.join("host-bin"),
        })
    }

    /// What a hook of `phase` gets.
    pub fn for_phase(
        &self,
        phase: Phase,
        image_block_device: Option<&Path>,
    ) -> Vec<(String, String)> {
        let mut env = self.vars.clone();
        match phase.side() {
            Side::Inside => {
                env.retain(|(k, _)| !HOST_ONLY.contains(&k.as_str()));
                for (k, v) in &mut env {
                    // The flavours' bin/ last: their tools never shadow the image's.
                    if k == "PATH" {
                        *v = format!("{v}:{IN_TARGET}/bin");
                    }
                    // dpkg's finalise.d takes `basename $IMAGE_NAME`; the directory is the user's.
                    if k == "IMAGE_NAME" {
                        *v = Path::new(v.as_str())
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default();
                    }
                }
                env.push(("TMP_HOOKS_PATH".into(), IN_TARGET.into()));
                env.push(("HOME".into(), "/root".into()));
            }
            Side::Host => {
                // diskimage-builder's host-side hooks `sudo` their privileged steps;
                // here they are root already. Inside, the image's own sudo stays.
                for (k, v) in &mut env {
                    if k == "PATH" {
                        *v = format!(
                            "{}:{v}:{}",
                            self.host_bin.display(),
                            self.hooks.join("bin").display()
                        );
                    }
                }
                env.push(("TMP_HOOKS_PATH".into(), self.hooks.display().to_string()));
                env.push(("TARGET_ROOT".into(), self.root.display().to_string()));
                env.push(("HOME".into(), self.home.display().to_string()));
                if let (Phase::BlockDevice, Some(dev)) = (phase, image_block_device) {
                    env.push(("IMAGE_BLOCK_DEVICE".into(), dev.display().to_string()));
                }
            }
        }
        env
    }

    /// environment.d/11-dib-install-type.bash: `--install-type` wins; without it a
    /// caller's DIB_DEFAULT_INSTALLTYPE does, else `source`.
    pub fn install_type_file(install_type: Option<&str>) -> String {
        match install_type {
            Some(t) => format!("export DIB_DEFAULT_INSTALLTYPE={}\n", shell_quote(t)),
            None => "export DIB_DEFAULT_INSTALLTYPE=${DIB_DEFAULT_INSTALLTYPE:-source}\n".into(),
        }
    }
}

/// `--image-cache`/DIB_IMAGE_CACHE, else diskimage-builder's `~/.cache/image-create`
/// (the user's home, not the hooks' HOME).
fn image_cache(c: &super::config::Config) -> Result<PathBuf> {
    if let Some(d) = &c.image_cache {
        return Ok(d.clone());
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("HOME is not set: give --image-cache DIR")?;
    Ok(Path::new(&home).join(".cache/image-create"))
}

/// diskimage-builder passes the python it runs under, which can import its own
/// package (package-installs-squash needs that). kiln has none: it prefers the
/// caller's virtualenv, then the one whose site-packages holds diskimage-builder's
/// elements used in this build, then the host's python3.
fn python_exec(plan: &Plan) -> String {
    let venv = std::env::var_os("VIRTUAL_ENV").map(PathBuf::from);
    let from_elements = plan
        .resolved
        .flavours
        .iter()
        .filter_map(|f| venv_of_element(&f.dir));
    for v in venv.into_iter().chain(from_elements) {
        for name in ["python3", "python"] {
            let p = v.join("bin").join(name);
            if is_executable(&p) {
                return p.display().to_string();
            }
        }
    }
    "/usr/bin/python3".into()
}

/// `<venv>/lib/pythonX.Y/site-packages/diskimage_builder/elements/<name>` → `<venv>`.
fn venv_of_element(dir: &Path) -> Option<PathBuf> {
    let elements = dir.parent()?;
    let package = elements.parent()?;
    if elements.file_name()? != "elements" || package.file_name()? != "diskimage_builder" {
        return None;
    }
    let site = package.parent()?;
    (site.file_name()? == "site-packages")
        .then(|| site.parent()?.parent()?.parent().map(Path::to_path_buf))?
}

/// A regular file (links followed) with an execute bit: what dib-run-parts runs.
pub(super) fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// What `declare -p` prints for exported variables (diskimage-builder's DIB_ENV).
fn declare_p<'a>(vars: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    vars.map(|(k, v)| {
        let mut q = String::with_capacity(v.len() + 2);
        for ch in v.chars() {
            if matches!(ch, '\\' | '"' | '$' | '`') {
                q.push('\\');
            }
            q.push(ch);
        }
        format!("declare -x {k}=\"{q}\"")
    })
    .collect::<Vec<_>>()
    .join("\n")
}

pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declare_p_quotes_as_bash_does() {
        let got = declare_p([("DIB_A", "x"), ("DIB_B", r#"a "b" $c `d` \e"#)].into_iter());
        assert_eq!(
            got,
            "declare -x DIB_A=\"x\"\ndeclare -x DIB_B=\"a \\\"b\\\" \\$c \\`d\\` \\\\e\""
        );
    }

    #[test]
    fn venv_found_from_diskimage_builders_elements() {
        let d = Path::new("/v/lib/python3.11/site-packages/diskimage_builder/elements/debootstrap");
        assert_eq!(venv_of_element(d), Some(PathBuf::from("/v")));
        assert_eq!(
            venv_of_element(Path::new("/usr/share/kiln/flavours/debian")),
            None
        );
    }

    #[test]
    fn install_type_flag_wins_else_the_callers_else_source() {
        assert_eq!(
            HookEnv::install_type_file(Some("pack'age")),
            "export DIB_DEFAULT_INSTALLTYPE='pack'\\''age'\n"
        );
        assert!(HookEnv::install_type_file(None).contains("${DIB_DEFAULT_INSTALLTYPE:-source}"));
    }
}
