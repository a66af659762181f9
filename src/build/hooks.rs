//! Running one phase's hooks in the sandbox (docs/architecture.md §3–4).

use super::hook_env::{HookEnv, INSTALL_TYPE_FILE};
use super::plan::Plan;
use super::progress::Progress;
use super::workdir::WorkDir;
use crate::flavour::{Hook, Phase, Side};
use crate::sandbox::{self, lend::Lend, Bind, View};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

pub use super::hook_env::IN_TARGET;

pub const APT_ARCHIVES: &str = "/var/cache/apt/archives";

/// Sources environment.d, then runs the hook; `$1` is the hook, `$2` the env dir.
/// Tracing is traced sourcing here and `DIB_DEBUG_TRACE` for the hook, which opts in
/// itself (as under diskimage-builder): shell options are never exported, because a
/// SHELLOPTS with nounset/errexit would reach apt, dpkg's maintainer scripts and every
/// other bash the hook starts, and break them.
/// Host-side hooks (the only ones with `_LIB`) get diskimage-builder's exported `die`.
const WRAPPER: &str = r#"if [ "${DIB_DEBUG_TRACE:-0}" -gt 0 ]; then set -x; fi
if [ -n "${_LIB:-}" ]; then . "$_LIB/die"; fi
for f in "$2"/*; do [ -f "$f" ] && . "$f"; done
exec "$1""#;

pub struct Runner<'a> {
    pub plan: &'a Plan,
    pub work: &'a WorkDir,
    pub env: HookEnv,
    pub apt_cache: PathBuf,
    pub image_block_device: Option<PathBuf>,
}

impl Runner<'_> {
    /// Copies every hook, data file and environment.d file into the build's
    /// hooks directory, which is /tmp/in_target.d inside the image.
    pub fn stage_hooks(&self) -> Result<()> {
        let dst = self.work.hooks();
        std::fs::create_dir_all(dst.join("environment.d"))?;
        for phase in Phase::ALL {
            let dir = dst.join(phase.dir_name());
            std::fs::create_dir_all(&dir)?;
            for h in self.plan.hooks.phase(phase) {
                copy_any(&h.path, &dir.join(&h.name))?;
            }
        }
        for d in &self.plan.hooks.data_files {
            copy_any(&d.path, &dst.join(d.phase.dir_name()).join(&d.name))?;
        }
        for e in &self.plan.env_files {
            copy_any(&e.path, &dst.join("environment.d").join(&e.name))?;
        }
        let install_type = HookEnv::install_type_file(self.plan.config.install_type.as_deref());
        std::fs::write(
            dst.join("environment.d").join(INSTALL_TYPE_FILE),
            install_type,
        )?;
        self.merge_element_trees(&dst)
    }

    /// The rest of every flavour, merged as diskimage-builder's generate_hooks does,
    /// because hooks read it through `$TMP_HOOKS_PATH` or `$(dirname $0)/..`:
    /// `bin/`, `static/`, `init-scripts/` and any other directory (same-named
    /// directories merge; the same file one level down in two flavours is an error),
    /// and the top-level files (the last flavour's wins, e.g. `source-repository-*`).
    fn merge_element_trees(&self, dst: &Path) -> Result<()> {
        // Staged file one level down -> the flavour file it came from.
        let mut shipped: std::collections::BTreeMap<PathBuf, PathBuf> = Default::default();
        for f in &self.plan.resolved.flavours {
            for (name, path) in sorted_dir(&f.dir)? {
                let meta = std::fs::metadata(&path)
                    .with_context(|| format!("flavour {}: reading {}", f.name, path.display()))?;
                if !meta.is_dir() {
                    if meta.is_file() && !name.ends_with(".pyc") {
                        copy_any(&path, &dst.join(&name))?;
                    }
                    continue;
                }
                // Phases and environment.d are staged from the plan, with its checks.
                if NOT_MERGED.contains(&name.as_str()) || Phase::from_dir_name(&name).is_some() {
                    continue;
                }
                std::fs::create_dir_all(dst.join(&name))?;
                for (entry, src) in sorted_dir(&path)? {
                    let to = dst.join(&name).join(&entry);
                    let is_dir = std::fs::metadata(&src)
                        .with_context(|| format!("flavour {}: reading {}", f.name, src.display()))?
                        .is_dir();
                    if let Some(first) = shipped.get(&to).or(if is_dir {
                        None
                    } else {
                        to.exists().then_some(&to)
                    }) {
                        bail!(
                            "two flavours ship {name}/{entry}: {} and {} (flavour {}); rename one of them, \
                             as diskimage-builder also refuses a duplicated file in the merged hooks directory",
                            first.display(),
                            src.display(),
                            f.name
                        );
                    }
                    copy_any(&src, &to)?;
                    if !is_dir {
                        shipped.insert(to, src);
                    }
                }
            }
        }
        Ok(())
    }

    pub fn run_phase(&self, phase: Phase, progress: &mut Progress) -> Result<()> {
        self.run_phase_lending(phase, None, progress)
    }

    /// Runs the phase's hooks; with `lend`, they may open a real block device.
    pub fn run_phase_lending(
        &self,
        phase: Phase,
        lend: Option<&Lend>,
        progress: &mut Progress,
    ) -> Result<()> {
        for d in self.plan.hooks.skipped_in(phase) {
            progress.say(&format!(
                "warning: {phase}/{} (flavour {}) skipped: not executable ({})",
                d.name,
                d.flavour,
                d.path.display()
            ));
        }
        for hook in self.hooks_now(phase, progress)? {
            self.run_hook(phase, &hook, lend, progress)?;
        }
        Ok(())
    }

    /// The phase's hooks as its staged directory holds them when it starts:
    /// earlier hooks may have linked more in (diskimage-builder's install-types
    /// links `install.d/*-<type>-install/*` there) or taken some away. As
    /// dib-run-parts: hook-named entries that are executable files, links followed.
    fn hooks_now(&self, phase: Phase, progress: &mut Progress) -> Result<Vec<Hook>> {
        let dir = self.work.hooks().join(phase.dir_name());
        let planned = self.plan.hooks.phase(phase);
        let mut hooks = Vec::new();
        for h in planned {
            if super::hook_env::is_executable(&dir.join(&h.name)) {
                hooks.push(h.clone());
            } else {
                progress.say(&format!(
                    "warning: {phase}/{} (flavour {}) not run: an earlier hook removed it or made it non-executable",
                    h.name, h.flavour
                ));
            }
        }
        let mut added: Vec<(String, PathBuf)> = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if crate::flavour::is_hook_name(&name)
                    && !planned.iter().any(|h| h.name == name)
                    && super::hook_env::is_executable(&e.path())
                {
                    let target = std::fs::canonicalize(e.path()).unwrap_or(e.path());
                    added.push((name, target));
                }
            }
        }
        for (name, path) in added {
            let flavour = self
                .plan
                .resolved
                .flavours
                .iter()
                .find(|f| path.starts_with(&f.dir))
                .map(|f| f.name.clone())
                .unwrap_or_else(|| "linked in during the build".into());
            hooks.push(Hook {
                phase,
                name,
                path,
                flavour,
            });
        }
        hooks.sort_by(|a, b| crate::flavour::hook_order(&a.name, &b.name));
        Ok(hooks)
    }

    fn run_hook(
        &self,
        phase: Phase,
        hook: &Hook,
        lend: Option<&Lend>,
        progress: &mut Progress,
    ) -> Result<()> {
        progress.step(
            &format!("{phase}/{}", hook.name),
            &format!("(flavour {})", hook.flavour),
        );
        let (argv, env_dir) = match phase.side() {
            Side::Inside => (
                format!("{IN_TARGET}/{}/{}", phase.dir_name(), hook.name),
                format!("{IN_TARGET}/environment.d"),
            ),
            Side::Host => (
                self.work
                    .hooks()
                    .join(phase.dir_name())
                    .join(&hook.name)
                    .display()
                    .to_string(),
                self.work
                    .hooks()
                    .join("environment.d")
                    .display()
                    .to_string(),
            ),
        };
        let argv = vec![
            "/bin/bash".into(),
            "-c".into(),
            WRAPPER.into(),
            "kiln-hook".into(),
            argv,
            env_dir,
        ];
        let code = self.exec_lending(phase, argv, lend, progress)?;
        if code.0 != 0 {
            bail!(
                "flavour {}, hook {phase}/{}: exit {}\n  file: {}\n  last output:\n    {}",
                hook.flavour,
                hook.name,
                code.0,
                hook.path.display(),
                code.1.join("\n    ")
            );
        }
        Ok(())
    }

    /// The package archive directory in-target hooks of `phase` get. Up to
    /// post-root.d it is kiln's shared cache. From pre-finalise.d on, packages
    /// are seldom installed and diskimage-builder's dpkg element runs `apt-get
    /// clean` (finalise.d/99-clean-up-cache), which would empty the shared cache
    /// for every later build: those phases get a directory of the build's own.
    fn archives_for(&self, phase: Phase) -> Result<PathBuf> {
        if phase < Phase::PreFinalise {
            return Ok(self.apt_cache.clone());
        }
        let own = self.work.path.join("apt-archives-late");
        std::fs::create_dir_all(own.join("partial"))
            .with_context(|| format!("creating {}", own.display()))?;
        Ok(own)
    }

    /// Runs a command in the phase's sandbox view; returns (exit code, output tail).
    pub fn exec(
        &self,
        phase: Phase,
        argv: Vec<String>,
        progress: &mut Progress,
    ) -> Result<(i32, Vec<String>)> {
        self.exec_lending(phase, argv, None, progress)
    }

    fn exec_lending(
        &self,
        phase: Phase,
        argv: Vec<String>,
        lend: Option<&Lend>,
        progress: &mut Progress,
    ) -> Result<(i32, Vec<String>)> {
        let side = phase.side();
        let env = self
            .env
            .for_phase(phase, self.image_block_device.as_deref());
        let root = self.work.root();
        let mut binds = Vec::new();
        let (view, cwd) = match side {
            Side::Inside => {
                binds.push(Bind {
                    src: self.work.hooks(),
                    inside: IN_TARGET.into(),
                    writable: false,
                });
                binds.push(Bind {
                    src: self.archives_for(phase)?,
                    inside: APT_ARCHIVES.into(),
                    writable: true,
                });
                if let Some(resolv) = host_resolv_conf() {
                    binds.push(Bind {
                        src: resolv,
                        inside: "/etc/resolv.conf".into(),
                        writable: false,
                    });
                }
                (View::Image(root.clone()), PathBuf::from("/"))
            }
            // diskimage-builder's host-side hooks run where it was started, so
            // relative paths in DIB_* variables mean the same.
            Side::Host => (
                View::Host,
                std::env::current_dir()
                    .ok()
                    .filter(|d| d.is_dir())
                    .unwrap_or_else(|| self.work.path.clone()),
            ),
        };
        if progress.trace {
            let v = match &view {
                View::Host => "host side".to_string(),
                View::Image(r) => format!("image root {}", r.display()),
            };
            progress.say(&format!(
                "+ sandbox ({v}, CAP_SYS_ADMIN {}): {}",
                phase == Phase::Root,
                argv.get(4)
                    .or(argv.last())
                    .map(String::as_str)
                    .unwrap_or("")
            ));
        }
        let job = sandbox::Job {
            argv,
            env,
            cwd,
            view,
            binds,
            // Bootstrapping mounts /proc and /dev into the new tree; nothing else may mount.
            sys_admin: phase == Phase::Root,
            seccomp: Some(&self.plan.seccomp),
            lend,
            record_owners: !self.plan.maps.has_range(),
        };
        let out = sandbox::run(&job, &mut |l| progress.output(l))?;
        Ok((out.code, out.tail))
    }

    /// diskimage-builder's install-static: every flavour's `static/` tree copied
    /// into the image before install.d. Done inside the image root, so an absolute
    /// symlink in the image cannot send the copy to a host path.
    pub fn install_static(&self, progress: &mut Progress) -> Result<()> {
        if !self.work.hooks().join("static").is_dir() {
            return Ok(());
        }
        progress.step("install.d/static", "static/ files of the flavours");
        let script = format!("cp -RP --preserve=mode,timestamps {IN_TARGET}/static/. /");
        let (code, tail) = self.exec(
            Phase::Install,
            vec!["/bin/sh".into(), "-c".into(), script],
            progress,
        )?;
        if code != 0 {
            bail!(
                "copying the flavours' static/ files into the image failed (exit {code}):\n    {}",
                tail.join("\n    ")
            );
        }
        Ok(())
    }

    /// diskimage-builder's package-installs for a phase the bootstrap could not
    /// take: apt inside the image, before the phase's hooks (and removals after).
    pub fn install_packages(
        &self,
        phase: Phase,
        install: bool,
        progress: &mut Progress,
    ) -> Result<()> {
        let Some((inst, uninst)) = self.plan.phase_packages.get(&phase) else {
            return Ok(());
        };
        let list = if install { inst } else { uninst };
        if list.is_empty() {
            return Ok(());
        }
        let verb = if install { "install" } else { "purge" };
        progress.step(
            &format!("{phase}/packages"),
            &format!("apt-get {verb} {}", list.join(" ")),
        );
        let script = format!(
            "export DEBIAN_FRONTEND=noninteractive; apt-get -q -y {} {verb} {}",
            if install {
                "--no-install-recommends"
            } else {
                "--auto-remove"
            },
            list.join(" ")
        );
        let run_phase = if phase.side() == Side::Inside {
            phase
        } else {
            Phase::Install
        };
        let (code, tail) = self.exec(
            run_phase,
            vec!["/bin/sh".into(), "-c".into(), script],
            progress,
        )?;
        if code != 0 {
            bail!(
                "packages for {phase}: apt-get {verb} failed (exit {code}):\n    {}",
                tail.join("\n    ")
            );
        }
        Ok(())
    }
}

/// Directories of a flavour that are not merged into the hooks directory:
/// diskimage-builder leaves out tests, and environment.d is staged from the plan.
const NOT_MERGED: [&str; 3] = ["tests", "__pycache__", "environment.d"];

fn sorted_dir(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let e = e?;
        v.push((e.file_name().to_string_lossy().into_owned(), e.path()));
    }
    v.sort();
    Ok(v)
}

/// The host's resolver configuration, as a regular file path (it is often a
/// symlink into /run).
fn host_resolv_conf() -> Option<PathBuf> {
    let p = std::fs::canonicalize("/etc/resolv.conf").ok()?;
    p.is_file().then_some(p)
}

fn copy_any(src: &Path, dst: &Path) -> Result<()> {
    let meta = std::fs::metadata(src).with_context(|| format!("reading {}", src.display()))?;
    if meta.is_dir() {
        std::fs::create_dir_all(dst)?;
        for e in std::fs::read_dir(src)? {
            let e = e?;
            copy_any(&e.path(), &dst.join(e.file_name()))?;
        }
    } else {
        std::fs::copy(src, dst)
            .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
    }
    Ok(())
}
