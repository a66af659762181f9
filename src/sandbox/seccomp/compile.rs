//! A checked profile to libseccomp's rules, for the capabilities a hook keeps and
//! the architectures this machine runs.

use std::collections::HashSet;

use libseccomp::{ScmpArch, ScmpArgCompare, ScmpFilterContext, ScmpSyscall};

use super::profile::{cap_name, Entry};
use super::{Filter, Profile, SeccompError};

impl Profile {
    /// Build the libseccomp filter for a process that will keep `kept_caps`
    /// (names like "CAP_SYS_ADMIN"): entries whose includes.caps are not all kept,
    /// or whose excludes.caps intersect them, are skipped.
    pub fn compile(&self, kept_caps: &[String]) -> Result<Filter, SeccompError> {
        let mut ctx =
            ScmpFilterContext::new(self.default_action).map_err(self.refused("defaultAction"))?;
        // kiln sets PR_SET_NO_NEW_PRIVS itself, at a point of its choosing; libseccomp
        // must not set it as a side effect of loading.
        ctx.set_ctl_nnp(false)
            .map_err(self.refused("no_new_privs attribute"))?;
        // Speed (a binary tree instead of a list of ~350 compares) and real kernel
        // errnos in messages; an older libseccomp without them enforces the same policy.
        let _ = ctx.set_ctl_optimize(2);
        let _ = ctx.set_api_sysrawrc(true);
        for &arch in self.arches.iter().filter(|&&a| runs_here(a)) {
            ctx.add_arch(arch).map_err(self.refused("architectures"))?;
        }
        for flag in &self.flags {
            // These change logging, thread sync and speculation mitigations, not what
            // is allowed; kiln loads in a single-threaded child, so a kernel lacking
            // TSYNC loses nothing either. Unknown flags are ignored likewise.
            let _ = match flag.as_str() {
                "SECCOMP_FILTER_FLAG_TSYNC" => ctx.set_ctl_tsync(true),
                "SECCOMP_FILTER_FLAG_LOG" => ctx.set_ctl_log(true),
                "SECCOMP_FILTER_FLAG_SPEC_ALLOW" => ctx.set_ctl_ssb(true),
                _ => continue,
            };
        }

        let kept: HashSet<String> = kept_caps.iter().map(|c| cap_name(c)).collect();
        for entry in self.entries.iter().filter(|e| e.applies(&kept)) {
            // libseccomp refuses rules that repeat the default action; they would
            // change nothing (runc skips them too).
            if entry.action == self.default_action {
                continue;
            }
            let conds: Vec<ScmpArgCompare> = entry.args.iter().map(|&(_, c)| c).collect();
            let repeated = (1..entry.args.len())
                .any(|i| entry.args[..i].iter().any(|a| a.0 == entry.args[i].0));
            // libseccomp cannot AND two comparisons of the same argument. Like runc,
            // such an entry becomes one rule per comparison, i.e. their OR.
            let rules: Vec<&[ScmpArgCompare]> = if repeated {
                conds.chunks(1).collect()
            } else {
                vec![&conds[..]]
            };
            for name in &entry.names {
                // Profiles list syscalls that exist only on some architectures or
                // kernels: a name libseccomp cannot resolve is skipped, as OCI runtimes
                // do. Names absent from one of the filter's arches resolve to pseudo
                // numbers that libseccomp leaves out for that arch.
                let Ok(syscall) = ScmpSyscall::from_name(name) else {
                    continue;
                };
                for rule in &rules {
                    ctx.add_rule_conditional(entry.action, syscall, rule)
                        .map_err(self.refused(&format!("{} ({name})", entry.at)))?;
                }
            }
        }
        Ok(Filter(ctx))
    }

    fn refused<'a>(
        &'a self,
        at: &'a str,
    ) -> impl FnOnce(libseccomp::error::SeccompError) -> SeccompError + 'a {
        move |source| SeccompError::Compile {
            origin: self.origin.clone(),
            at: at.to_string(),
            source,
        }
    }
}

impl Entry {
    fn applies(&self, kept: &HashSet<String>) -> bool {
        self.includes.caps.iter().all(|c| kept.contains(c))
            && !self.excludes.caps.iter().any(|c| kept.contains(c))
            && (self.includes.arches.is_empty()
                || self.includes.arches.iter().any(|a| is_native(a)))
            && !self.excludes.arches.iter().any(|a| is_native(a))
    }
}

/// The ABIs this kernel can run. Other architectures a profile names are ignored,
/// so one profile serves x86_64 and aarch64 hosts without bloating the filter;
/// the kernel never reports a foreign arch, so leaving it out changes nothing.
fn runs_here(arch: ScmpArch) -> bool {
    if cfg!(target_arch = "x86_64") {
        matches!(
            arch,
            ScmpArch::X8664 | ScmpArch::X86 | ScmpArch::X32 | ScmpArch::Native
        )
    } else if cfg!(target_arch = "aarch64") {
        matches!(arch, ScmpArch::Aarch64 | ScmpArch::Arm | ScmpArch::Native)
    } else {
        true
    }
}

/// Docker names arches in includes/excludes by Go's GOARCH; libseccomp and uname
/// spellings are accepted as well.
fn is_native(name: &str) -> bool {
    let names: &[&str] = if cfg!(target_arch = "x86_64") {
        &["amd64", "x86_64", "SCMP_ARCH_X86_64"]
    } else if cfg!(target_arch = "aarch64") {
        &["arm64", "aarch64", "SCMP_ARCH_AARCH64"]
    } else {
        &[std::env::consts::ARCH]
    };
    names.contains(&name)
}
