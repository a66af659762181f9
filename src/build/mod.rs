//! The pipeline of docs/architecture.md §2, one named step after another.

pub mod apt_cache;
pub mod apt_lists;
pub mod cache;
pub mod config;
pub mod devices;
pub mod hook_env;
pub mod hooks;
pub mod image_root;
pub mod manifest;
pub mod mirror;
pub mod outputs;
pub mod plan;
pub mod progress;
mod reproducible;
pub mod saved;
mod staging;
pub mod tools;
pub mod usage;
pub mod workdir;

use crate::cli::{DiskImageArgs, Vars};
use crate::flavour::Phase;
use crate::sandbox::{lend::Lend, namespace, signals, Interrupted};
use crate::tree::owners::Recorded;
use crate::tree::ImageTree;
use anyhow::{bail, Context, Result};
use cache::{Lookup, TreeCache};
use config::Config;
use hooks::Runner;
use plan::Plan;
use progress::Progress;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use workdir::WorkDir;

/// Exit code for a build stopped by SIGINT/SIGTERM.
pub const EXIT_INTERRUPTED: i32 = 130;

pub fn disk_image_create(args: DiskImageArgs) -> Result<i32> {
    add_sbin_to_path();
    let vars = Vars::load(std::env::vars())?;
    let terminal = (args.quiet, args.trace > 0);
    logged(
        "disk-image-create",
        args.logfile.as_deref(),
        &vars,
        terminal,
        || {
            if args.list_flavours {
                return list_flavours(&vars);
            }
            if args.cache_list || args.cache_prune.is_some() {
                return cache_command(&args, &vars);
            }
            build(Config::from_args(args.clone(), vars.clone())?)
        },
    )
}

pub fn ramdisk_image_create(args: crate::cli::RamdiskArgs) -> Result<i32> {
    add_sbin_to_path();
    let vars = Vars::load(std::env::vars())?;
    let logfile = args.common.logfile.clone();
    let terminal = (args.common.quiet, args.common.trace > 0);
    logged(
        "ramdisk-image-create",
        logfile.as_deref(),
        &vars,
        terminal,
        || {
            if args.common.list_flavours {
                return list_flavours(&vars);
            }
            build(Config::from_ramdisk_args(args, vars.clone())?)
        },
    )
}

/// Runs `f` with stderr going through `--logfile`/DIB_QUIET; an error is
/// printed while the log is still open, so the log ends with it.
fn logged(
    program: &str,
    logfile: Option<&Path>,
    vars: &Vars,
    (quiet, trace): (bool, bool),
    f: impl FnOnce() -> Result<i32>,
) -> Result<i32> {
    let settings =
        crate::cli::log::LogSettings::new(logfile, vars.get("DIB_QUIET"))?.terminal(quiet, trace);
    let Some(tee) = crate::cli::log::Tee::start(&settings)? else {
        return f();
    };
    let code = f().unwrap_or_else(|e| {
        eprintln!("{program}: error: {e:#}");
        1
    });
    tee.finish();
    Ok(code)
}

fn build(config: Config) -> Result<i32> {
    let plan = Plan::make(config)?;
    if plan.config.dry_run {
        print!("{}", plan.describe());
        return Ok(0);
    }
    if let Some(blocked) =
        crate::sandbox::userns_check::blocker().or_else(crate::sandbox::container_check::blocker)
    {
        bail!("{blocked}");
    }
    for n in &plan.resolved.notes {
        eprintln!("note: {n}");
    }
    for w in &plan.warnings {
        eprintln!("warning: {w}");
    }
    outputs::check_destination(&plan.config)?;
    signals::install();
    let work = WorkDir::create(&plan.maps, outputs::stage(&plan.config)?)?;
    // Outside the namespace, where kiln-helper can still gain its privilege.
    let broker = match &plan.helper {
        Some((helper, _)) => Some(devices::Broker::start(helper)?),
        None => None,
    };
    let code = namespace::enter(&plan.maps, || worker(&plan, &work, broker.as_ref()))?;
    drop(broker);
    drop(work);
    Ok(if signals::interrupted() && code != 0 {
        EXIT_INTERRUPTED
    } else {
        code
    })
}

/// `--list-flavours`: the names a build could be given, for shell completion.
fn list_flavours(vars: &Vars) -> Result<i32> {
    let search = crate::flavour::search::SearchPath::new(
        &config::user_flavour_path(vars),
        config::builtin_flavours()?,
    );
    for name in search.all_names() {
        println!("{name}");
    }
    Ok(0)
}

/// `--cache-list` / `--cache-prune DAYS`. Archives belong to the user, so no
/// namespace is needed to remove them.
fn cache_command(args: &DiskImageArgs, vars: &Vars) -> Result<i32> {
    let dir = config::cache_dir(args, vars)?;
    let cache = TreeCache::new(&dir);
    let entries = cache.list()?;
    if args.cache_list {
        println!("{:<16}  {:>10}  {:>8}", "base tree", "size", "unused");
        for (key, size, age) in &entries {
            println!(
                "{:<16}  {:>7} MiB  {:>6} d",
                &key[..16.min(key.len())],
                size >> 20,
                age / 86400
            );
        }
        println!("{} entries in {}", entries.len(), dir.display());
        return Ok(0);
    }
    let days = args.cache_prune.unwrap_or(0);
    let mut freed = 0;
    for (key, size, age) in entries {
        if age >= days * 86400 {
            cache.discard(&key);
            freed += size;
        }
    }
    if days == 0 {
        let apt = dir.join("apt");
        if apt.exists() {
            std::fs::remove_dir_all(&apt).with_context(|| format!("removing {}", apt.display()))?;
        }
    }
    println!("freed {} MiB in {}", freed >> 20, dir.display());
    Ok(0)
}

/// mkfs and friends live in sbin, which an ordinary user's PATH often lacks.
fn add_sbin_to_path() {
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into());
    let mut parts: Vec<&str> = path.split(':').collect();
    for d in ["/usr/local/sbin", "/usr/sbin", "/sbin"] {
        if !parts.contains(&d) {
            parts.push(d);
        }
    }
    // SAFETY: kiln is single-threaded here, before any other work.
    std::env::set_var("PATH", parts.join(":"));
}

/// Inside the namespace: run the pipeline, then remove the build tree (only
/// here can kiln delete files that belong to subordinate ids).
fn worker(plan: &Plan, work: &WorkDir, broker: Option<&devices::Broker>) -> i32 {
    if let Some(epoch) = plan.config.source_date_epoch {
        // For the host tools that read it themselves (mtools, mksquashfs, gzip),
        // also when it came from a defaults file rather than the environment.
        std::env::set_var("SOURCE_DATE_EPOCH", epoch.to_string());
    }
    let mut progress = Progress::new(plan.config.trace);
    progress.stamps = plan.config.timestamps;
    let result = work
        .open_inside()
        .and_then(|()| pipeline(plan, work, broker, &mut progress));
    progress.finish();
    work.empty_inside();
    // Here too, for when kiln itself was killed and only this side unwinds.
    work.outputs.discard();
    match result {
        Ok(()) => {
            eprint!("{}", progress.table());
            // kiln's own memory, not its tools': the worker does all of kiln's work.
            if let Ok(u) = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
            {
                eprintln!("kiln peak RSS: {:.1} MiB", u.max_rss() as f64 / 1024.0);
            }
            0
        }
        Err(e) if e.is::<Interrupted>() || signals::interrupted() => {
            eprintln!("kiln: interrupted; the build directory and partial outputs were removed");
            EXIT_INTERRUPTED
        }
        Err(e) => {
            eprintln!("kiln: error: {e:#}");
            1
        }
    }
}

/// The build, step by step: each step reads the plan and hands what it made
/// to the next through [`Build`].
fn pipeline(
    plan: &Plan,
    work: &WorkDir,
    broker: Option<&devices::Broker>,
    progress: &mut Progress,
) -> Result<()> {
    let mut b = Build::start(plan, work, broker, progress)?;
    make_root(plan, &mut b)?;
    run_install_phases(plan, &mut b)?;
    lay_out_disk(plan, &mut b)?;
    block_device(plan, &mut b)?;
    finish_phases(plan, &mut b)?;
    record_owners(plan, &mut b)?;
    normalise(plan, &mut b)?;
    assemble(plan, &mut b)?;
    write_outputs(plan, &mut b)
}

/// What the pipeline's steps hand one another.
struct Build<'a> {
    work: &'a WorkDir,
    broker: Option<&'a devices::Broker>,
    progress: &'a mut Progress,
    runner: Runner<'a>,
    apt: apt_cache::AptCache,
    /// The image root, from [`make_root`] on.
    tree: Option<ImageTree>,
    /// The disk's plan and its raw image, from [`lay_out_disk`] on, when an
    /// output needs a disk.
    disk: Option<(crate::disk::DiskPlan, PathBuf)>,
    /// The owners hooks chose, from [`record_owners`] on, in a build without
    /// subordinate ids (docs/architecture.md §4).
    owners: Option<Recorded>,
}

impl<'a> Build<'a> {
    /// The build directory, the tree's tmpfs, the package cache, and the hooks
    /// staged with their environment.
    fn start(
        plan: &'a Plan,
        work: &'a WorkDir,
        broker: Option<&'a devices::Broker>,
        progress: &'a mut Progress,
    ) -> Result<Build<'a>> {
        let c = &plan.config;
        for d in [work.hooks(), work.image(), work.home(), work.root()] {
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        tree_in_memory(c.tmpfs_min, &work.root(), !plan.maps.has_range(), progress)?;
        let apt = apt_cache::AptCache::open(
            &c.cache_dir,
            &apt_cache_dir(c),
            work,
            c.vars.get("DIB_APT_KEYRING"),
            progress,
        )?;
        let apt_cache = apt.dir().to_path_buf();
        let runner = Runner {
            plan,
            work,
            env: hook_env::HookEnv::new(plan, work, &apt_cache)?,
            apt_cache,
            image_block_device: None,
        };
        runner.stage_hooks()?;
        Ok(Build {
            work,
            broker,
            progress,
            runner,
            apt,
            tree: None,
            disk: None,
            owners: None,
        })
    }
}

/// [`Build::tree`], for the steps after [`make_root`].
fn made(tree: &Option<ImageTree>) -> Result<&ImageTree> {
    tree.as_ref()
        .context("internal: a step needs the image tree before root.d made it")
}

/// root.d, or the base-tree cache: the image root the later phases work in.
fn make_root(plan: &Plan, b: &mut Build) -> Result<()> {
    let root = b.work.root();
    base_tree(plan, &b.runner, &root, &mut b.apt, b.progress)?;
    // From here on the tree holds what hooks and packages wrote: see crate::tree.
    let tree = ImageTree::open(&root)?;
    image_root::prepare(&tree)?;
    b.tree = Some(tree);
    Ok(())
}

/// extra-data.d to post-root.d, then first-boot.d's hooks into the image.
fn run_install_phases(plan: &Plan, b: &mut Build) -> Result<()> {
    for phase in [
        Phase::ExtraData,
        Phase::PreInstall,
        Phase::Install,
        Phase::PostInstall,
        Phase::PostRoot,
    ] {
        run_phase(&b.runner, phase, None, b.progress)?;
    }
    image_root::install_first_boot(&b.work.hooks(), made(&b.tree)?)?;
    if plan.config.show_usage {
        b.progress.say(&usage::report(&b.work.root())?);
    }
    Ok(())
}

/// The disk planned from the tree's size and its partition table written, for
/// block-device.d to see.
fn lay_out_disk(plan: &Plan, b: &mut Build) -> Result<()> {
    if !plan.needs_disk {
        return Ok(());
    }
    let c = &plan.config;
    b.progress
        .step("block-device", &format!("layout {}", plan.layout.as_str()));
    let content = crate::disk::content_size(&b.work.root())?;
    let size = match c.image_size {
        Some(s) => {
            crate::disk::check_image_size(s, content, plan.layout)?;
            s
        }
        // As diskimage-builder: the journal and DIB_IMAGE_EXTRA_SIZE come on top.
        None => {
            crate::disk::size_for_content(content, plan.layout)
                + (c.journal_mib.unwrap_or(0) << 20)
                + c.extra_size.unwrap_or(0)
        }
    };
    let d = crate::disk::plan_disk(
        plan.layout,
        c.fs_type,
        size,
        &c.root_label,
        c.mkfs_options.clone(),
        &plan.seed,
        c.source_date_epoch,
    )?;
    let raw = b.work.image().join("disk.raw");
    crate::disk::lay_out(&raw, &d)?;
    b.runner.image_block_device = Some(raw.clone());
    b.disk = Some((d, raw));
    Ok(())
}

/// block-device.d: with the image on a loop device when a flavour asked for one
/// (and then kiln's partitions as the hooks left them), else on the file.
fn block_device(_plan: &Plan, b: &mut Build) -> Result<()> {
    match (b.broker, &b.disk) {
        (Some(broker), Some((_, raw))) => {
            block_device_phase(&mut b.runner, broker, raw, b.progress)?
        }
        _ => run_phase(&b.runner, Phase::BlockDevice, None, b.progress)?,
    }
    // One policy, with or without a loop device: the table a hook left is the truth.
    if let Some((d, raw)) = &mut b.disk {
        adopt_partitions(d, raw, b.progress)?;
    }
    Ok(())
}

/// pre-finalise.d, finalise.d and cleanup.d; then the package cache is settled
/// and kiln's build-time files leave the tree.
fn finish_phases(_plan: &Plan, b: &mut Build) -> Result<()> {
    for phase in [Phase::PreFinalise, Phase::Finalise, Phase::Cleanup] {
        run_phase(&b.runner, phase, None, b.progress)?;
    }
    // No phase after this one binds the package cache.
    b.apt.settle(b.progress)?;
    image_root::tidy(made(&b.tree)?)
}

/// No hook runs from here on: the owners recorded on the tree's files (a build
/// without subordinate ids) are read for the writers, and the attribute that
/// held them leaves the tree so that no output copies it.
fn record_owners(plan: &Plan, b: &mut Build) -> Result<()> {
    let tree = made(&b.tree)?;
    if !plan.maps.has_range() {
        let owners = Recorded::read(tree)?;
        b.progress.step(
            "owners",
            &format!("{} files with a recorded owner", owners.len()),
        );
        b.owners = Some(owners);
    }
    let stray = crate::tree::owners::strip(tree)?;
    if plan.maps.has_range() && stray > 0 {
        b.progress.say(&format!(
            "owners: removed {} from {stray} files (a build with subordinate ids gives files their owners directly)",
            crate::tree::owners::XATTR.to_string_lossy()
        ));
    }
    Ok(())
}

/// With SOURCE_DATE_EPOCH: the tree made independent of when it was built.
fn normalise(plan: &Plan, b: &mut Build) -> Result<()> {
    let Some(epoch) = plan.config.source_date_epoch else {
        return Ok(());
    };
    let n = reproducible::normalise(made(&b.tree)?, epoch)?;
    b.progress.step(
        "reproducible",
        &format!(
            "{} times clamped to SOURCE_DATE_EPOCH={epoch}; removed {}",
            n.clamped,
            if n.removed.is_empty() {
                "nothing".to_string()
            } else {
                n.removed.join(" ")
            }
        ),
    );
    Ok(())
}

/// The filesystems filled from the tree into the disk, and the bootloader.
fn assemble(plan: &Plan, b: &mut Build) -> Result<()> {
    let Some((d, raw)) = &b.disk else {
        return Ok(());
    };
    let tree = made(&b.tree)?;
    check_interrupted()?;
    b.progress.step("assemble", "filesystems");
    crate::disk::build_filesystems(raw, tree, d, b.owners.as_ref())?;
    if plan.resolved.has("bootloader") {
        check_interrupted()?;
        b.progress.step("assemble", "bootloader");
        crate::disk::install_bootloader(raw, tree, d)?;
    }
    Ok(())
}

/// Every output, its checksums and the manifest, renamed into place together.
fn write_outputs(plan: &Plan, b: &mut Build) -> Result<()> {
    check_interrupted()?;
    b.progress
        .step("outputs", &plan.config.output_names().join(","));
    outputs::write_all(
        plan,
        made(&b.tree)?,
        b.disk.as_ref().map(|(_, r)| r.as_path()),
        b.owners.as_ref(),
        &b.work.saved(),
        &b.work.outputs,
        &b.progress.timings,
    )
}

/// The tree in a tmpfs when memory allows: unpacking and bootstrapping on a
/// disk filesystem costs seconds of page-cache and journal work per build.
/// Recording owners (no subordinate ids) needs `user.` attributes, which tmpfs
/// holds only from Linux 6.6: on older kernels the tree goes on disk.
fn tree_in_memory(
    min: Option<u64>,
    root: &Path,
    records_owners: bool,
    progress: &mut Progress,
) -> Result<()> {
    let Some(min) = min else { return Ok(()) };
    let available = mem_available().unwrap_or(0);
    if available < min {
        progress.say(&format!(
            "tree on disk: {} MiB of memory free, the tmpfs needs {} MiB (--min-tmpfs)",
            available >> 20,
            min >> 20
        ));
        return Ok(());
    }
    crate::sandbox::mounts::tree_tmpfs(root)
        .map_err(|e| anyhow::anyhow!("{e} (--no-tmpfs builds on disk)"))?;
    if records_owners && crate::tree::owners::can_record_in(root).is_err() {
        crate::sandbox::mounts::release(root);
        progress.say(
            "tree on disk: this kernel's tmpfs holds no user.* attributes (Linux 6.6 and later \
             do), and recording owners without subordinate ids needs them",
        );
    }
    Ok(())
}

fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib << 10)
}

/// Between steps: stop promptly after SIGINT/SIGTERM.
fn check_interrupted() -> Result<()> {
    if signals::interrupted() {
        bail!(Interrupted);
    }
    Ok(())
}

fn run_phase(
    runner: &Runner,
    phase: Phase,
    lend: Option<&Lend>,
    progress: &mut Progress,
) -> Result<()> {
    check_interrupted()?;
    if phase == Phase::Install {
        runner.install_static(progress)?;
    }
    runner.install_packages(phase, true, progress)?;
    runner.run_phase_lending(phase, lend, progress)?;
    runner.install_packages(phase, false, progress)
}

/// block-device.d with the image attached to a loop device (kiln-helper): the
/// hooks open /dev/loopN and its partitions; everything after works on the file.
fn block_device_phase(
    runner: &mut Runner,
    broker: &devices::Broker,
    raw: &Path,
    progress: &mut Progress,
) -> Result<()> {
    check_interrupted()?;
    let image = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(raw)
        .with_context(|| format!("opening {}", raw.display()))?;
    progress.step(
        "block-device",
        "attaching the image to a loop device (kiln-helper)",
    );
    let attached = broker.attach(&image)?;
    // The kernel numbers each binding (diskseq), which tells this attachment
    // from a later one of the same device (what a leak check needs).
    let diskseq = std::fs::read_to_string(format!("/sys/block/{}/diskseq", attached.name))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    progress.say(&format!(
        "block-device: the image is /dev/{} (diskseq {diskseq}) until block-device.d ends",
        attached.name
    ));
    runner.image_block_device = Some(PathBuf::from("/dev").join(&attached.name));
    let partitions = || broker.partitions();
    let lend = Lend {
        disk: attached.disk.as_fd(),
        partitions: &partitions,
    };
    let ran = run_phase(runner, Phase::BlockDevice, Some(&lend), progress);
    // What the hooks wrote through the device must be in the file before kiln reads it.
    let synced = nix::unistd::fsync(attached.disk.as_raw_fd()).context("flushing the loop device");
    let detached = broker.detach();
    drop(attached);
    runner.image_block_device = Some(raw.to_path_buf());
    ran?;
    synced?;
    detached
}

/// A block-device.d hook may have moved or resized kiln's partitions, on the loop
/// device or in the file: kiln fills them where the table now says they are
/// (disk::adopt_table has the policy).
fn adopt_partitions(
    d: &mut crate::disk::DiskPlan,
    raw: &Path,
    progress: &mut Progress,
) -> Result<()> {
    for m in crate::disk::adopt_table(raw, d)? {
        progress.say(&format!(
            "block-device: partition {} is now at {} MiB, {} MiB long",
            m.number,
            m.start >> 20,
            m.size >> 20
        ));
    }
    Ok(())
}

/// root: from the base-tree cache when every input matches, else the OS
/// flavour's root.d (which then fills the cache).
fn base_tree(
    plan: &Plan,
    runner: &Runner,
    root: &Path,
    apt: &mut apt_cache::AptCache,
    progress: &mut Progress,
) -> Result<()> {
    let c = &plan.config;
    let cache = TreeCache::new(&c.cache_dir);
    let key = &plan.cache_key;
    let _lock = if c.use_cache {
        Some(cache.lock(key)?)
    } else {
        None
    };
    if c.use_cache {
        match cache.lookup(key)? {
            Lookup::Hit(archive) => {
                progress.step("root.d (cached)", &format!("base tree {}", &key[..12]));
                return cache.restore(&archive, root, &plan.tools);
            }
            Lookup::Corrupt(why) => progress.say(&format!(
                "warning: cached base tree {} was corrupt ({why}); discarded, rebuilding",
                &key[..12]
            )),
            Lookup::Miss => {}
        }
    }
    if c.offline {
        bail!(
            "--offline: no cached base tree for this configuration (key {}) in {}; run the same build once without --offline",
            &key[..12],
            c.cache_dir.display()
        );
    }
    std::fs::create_dir_all(root)?;
    runner.run_phase(Phase::Root, progress)?;
    if std::fs::read_dir(root)
        .map(|mut d| d.next().is_none())
        .unwrap_or(true)
    {
        bail!(
            "no root.d hook created the image root (flavours: {})",
            plan.resolved.names().join(" ")
        );
    }
    image_root::drop_dev_placeholders(&ImageTree::open(root)?)?;
    apt.after_bootstrap(progress)?;
    if c.use_cache {
        progress.step("root.d (caching)", &format!("base tree {}", &key[..12]));
        cache.store(key, root, &plan.tools)?;
    }
    Ok(())
}

fn apt_cache_dir(c: &Config) -> PathBuf {
    use sha2::Digest;
    let h = sha2::Sha256::digest(format!("{}\n{}\n{}", c.mirror, c.release, c.arch).as_bytes());
    let tag: String = h.iter().take(8).map(|b| format!("{b:02x}")).collect();
    c.cache_dir
        .join("apt")
        .join(format!("{}-{}-{tag}", c.release, c.arch))
}
