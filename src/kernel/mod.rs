//! disk-image-get-kernel (docs/architecture.md §7): copy the kernel and initrd out of a raw or
//! qcow2 image without mounting it — image → partition table → ext filesystem →
//! /boot → the newest vmlinuz and its initrd, reading only the blocks on that path.

mod ext4;
mod image;
mod output;
mod partitions;
mod probe;
mod qcow2;
mod select;

#[cfg(test)]
mod tests;

pub use select::{version_cmp, Patterns};

use crate::partition::{Kind, Partition};
use anyhow::{bail, Context, Result};
use ext4::{Ext4, Inode, S_IFDIR, S_IFLNK, S_IFREG};
use image::Volume;
use output::{OutDir, Pending};
use probe::Fs;
use std::path::PathBuf;

pub struct Options {
    pub image: PathBuf,
    pub dir: PathBuf,
    pub prefix: String,
    pub patterns: Patterns,
    /// Say what was looked at, on standard error.
    pub verbose: bool,
}

impl Patterns {
    /// DIB_BAREMETAL_KERNEL_PATTERN / DIB_BAREMETAL_INITRD_PATTERN; empty means unset.
    pub fn from_env() -> Patterns {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Patterns {
            kernel: get("DIB_BAREMETAL_KERNEL_PATTERN"),
            initrd: get("DIB_BAREMETAL_INITRD_PATTERN"),
        }
    }
}

pub struct Extracted {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Where they came from, e.g. `partition 3 ("root"), /boot/vmlinuz-6.1.0-1-amd64`.
    pub kernel_source: String,
    pub initrd_source: String,
}

/// A kernel is a few tens of MiB; anything past this is a corrupt inode, not a kernel.
const MAX_FILE_BYTES: u64 = 4 << 30;

pub fn get_kernel(opts: &Options) -> Result<Extracted> {
    check_options(opts)?;
    let out = OutDir::open(&opts.dir)?;
    let shown = opts.image.display();
    let mut disk = image::open(&opts.image)?;
    let (table, parts) = partitions::find(disk.as_mut()).with_context(|| format!("{shown}"))?;
    if opts.verbose {
        let t = match table {
            Some(Kind::Gpt) => "a GPT",
            Some(Kind::Mbr) => "an MBR",
            None => "no partition table",
        };
        eprintln!(
            "{shown}: {} image, {} bytes, {t}, {} filesystem(s) to look at",
            disk.format(),
            disk.size(),
            parts.len()
        );
    }
    let mut notes = Vec::new();
    let mut saw_ext = false;
    for part in &parts {
        let what = part.describe();
        if part
            .start
            .checked_add(part.len)
            .is_none_or(|end| end > disk.size())
        {
            bail!("{shown}: {what} extends past the end of the image ({} bytes): the image is truncated", disk.size());
        }
        let fs = probe::identify_at(disk.as_mut(), part.start, part.len)
            .with_context(|| format!("{shown}: {what}"))?;
        if opts.verbose {
            eprintln!("  {what}: {}", fs_name(fs));
        }
        match fs {
            Some(Fs::Ext) => saw_ext = true,
            other => {
                notes.push(format!("{what} holds {}", fs_name(other)));
                continue;
            }
        }
        let vol = Volume::new(disk.as_mut(), part.start, part.len);
        let mut fs = Ext4::open(vol).with_context(|| format!("{shown}: {what}"))?;
        let found =
            find_kernel(&mut fs, &opts.patterns).with_context(|| format!("{shown}: {what}"))?;
        let Some(found) = found else {
            notes.push(format!(
                "{what} (ext) has no {} in /boot or /",
                kernel_wanted(&opts.patterns)
            ));
            continue;
        };
        return extract(&mut fs, part, found, opts, &out)
            .with_context(|| format!("{shown}: {what}"));
    }
    bail!(
        "no kernel found in {shown}: {}{}",
        notes.join("; "),
        if saw_ext {
            ""
        } else {
            " — disk-image-get-kernel reads kernels from ext2/3/4 filesystems only"
        }
    )
}

fn check_options(opts: &Options) -> Result<()> {
    if opts.prefix.is_empty() || opts.prefix.contains('/') {
        bail!("the output prefix {:?} must be a plain file name prefix (choose the directory with -d)", opts.prefix);
    }
    for (var, p) in [
        ("DIB_BAREMETAL_KERNEL_PATTERN", &opts.patterns.kernel),
        ("DIB_BAREMETAL_INITRD_PATTERN", &opts.patterns.initrd),
    ] {
        if p.as_deref().is_some_and(|p| p.contains('/')) {
            bail!("{var} matches file names in /boot and cannot contain '/'");
        }
    }
    Ok(())
}

fn fs_name(fs: Option<Fs>) -> String {
    match fs {
        Some(Fs::Ext) => "ext2/3/4".to_string(),
        Some(Fs::Other(name)) => format!("{name}, which disk-image-get-kernel cannot read"),
        None => "no filesystem it recognises".to_string(),
    }
}

fn kernel_wanted(p: &Patterns) -> String {
    match &p.kernel {
        Some(k) => format!("file matching DIB_BAREMETAL_KERNEL_PATTERN={k:?}"),
        None => "vmlinuz-*".to_string(),
    }
}

struct Found {
    dir: &'static str,
    kernel: (String, Inode),
    initrd: (String, Inode),
}

/// /boot of a root filesystem, else the top of a separate /boot filesystem.
fn find_kernel(fs: &mut Ext4, patterns: &Patterns) -> Result<Option<Found>> {
    for (dir, shown) in [(&b"/boot"[..], "/boot/"), (b"/", "/")] {
        let Some(d) = fs.lookup(dir)? else { continue };
        if d.kind() != S_IFDIR {
            continue;
        }
        let mut files = Vec::new();
        for e in fs.list_dir(&d)? {
            if !select::relevant(&e.name, patterns) {
                continue;
            }
            let mut node = fs.inode(e.ino)?;
            if node.kind() == S_IFLNK {
                match fs.follow(d.ino, &e)? {
                    Some(n) => node = n,
                    None => continue,
                }
            }
            if node.kind() == S_IFREG {
                files.push((e.name, node));
            }
        }
        let names: Vec<Vec<u8>> = files.iter().map(|(n, _)| n.clone()).collect();
        if let Some(choice) = select::choose(&names, patterns, shown)? {
            let take = |want: &[u8]| {
                let (n, i) = files
                    .iter()
                    .find(|(n, _)| n == want)
                    .context("the chosen file vanished from the listing")?;
                Ok::<_, anyhow::Error>((String::from_utf8_lossy(n).into_owned(), i.clone()))
            };
            return Ok(Some(Found {
                dir: shown,
                kernel: take(&choice.kernel)?,
                initrd: take(&choice.initrd)?,
            }));
        }
    }
    Ok(None)
}

fn extract(
    fs: &mut Ext4,
    part: &Partition,
    found: Found,
    opts: &Options,
    out: &OutDir,
) -> Result<Extracted> {
    let kernel = Pending::create(out, &format!("{}-vmlinuz", opts.prefix))?;
    let initrd = Pending::create(out, &format!("{}-initrd", opts.prefix))?;
    for ((name, inode), out) in [(&found.kernel, &kernel), (&found.initrd, &initrd)] {
        let path = format!("{}{name}", found.dir);
        if opts.verbose {
            eprintln!(
                "  copying {path} ({} bytes) to {}",
                inode.size,
                out.target().display()
            );
        }
        copy(fs, inode, out).with_context(|| format!("copying {path}"))?;
    }
    let result = Extracted {
        kernel: kernel.target(),
        initrd: initrd.target(),
        kernel_source: format!("{}, {}{}", part.describe(), found.dir, found.kernel.0),
        initrd_source: format!("{}, {}{}", part.describe(), found.dir, found.initrd.0),
    };
    output::commit(vec![kernel, initrd])?;
    Ok(result)
}

fn copy(fs: &mut Ext4, inode: &Inode, out: &Pending) -> Result<()> {
    if inode.size > MAX_FILE_BYTES {
        bail!(
            "it is {} bytes, too large for a kernel or initrd: the filesystem is corrupt",
            inode.size
        );
    }
    // No check for Ctrl-C here: SIGINT keeps its default action and kills at
    // once, even in a read the kernel would not interrupt for a handler.
    fs.read_file(inode, &mut |offset, data| out.write_at(offset, data))?;
    out.finish(inode.size)
}
