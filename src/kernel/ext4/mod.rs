//! ext2/3/4 read without mounting: superblock, group descriptors, inodes. File
//! contents are in `map`, directories and paths in `dir`.
//! Layout reference: the kernel's Documentation/filesystems/ext4/ (ondisk layout).

mod dir;
mod map;

use super::image::Volume;
use anyhow::{bail, Result};
use std::collections::HashMap;

const INCOMPAT_COMPRESSION: u32 = 0x1;
const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_DIRDATA: u32 = 0x1000;
/// Everything else in today's kernel changes nothing for a reader of plain files.
const INCOMPAT_KNOWN: u32 = 0x2
    | 0x4
    | INCOMPAT_META_BG
    | 0x40
    | INCOMPAT_64BIT
    | 0x100
    | 0x200
    | 0x400
    | 0x2000
    | 0x4000
    | 0x8000
    | 0x10000
    | 0x20000;
const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
const COMPAT_SPARSE_SUPER2: u32 = 0x200;

pub const ROOT_INO: u32 = 2;

pub struct Ext4<'d> {
    vol: Volume<'d>,
    pub block_size: u64,
    blocks_count: u64,
    first_data_block: u64,
    blocks_per_group: u64,
    inodes_per_group: u32,
    inodes_count: u32,
    inode_size: u64,
    desc_size: u64,
    groups: u64,
    incompat: u32,
    ro_compat: u32,
    compat: u32,
    first_meta_bg: u64,
    backup_bgs: [u64; 2],
    inode_tables: HashMap<u64, u64>,
}

#[derive(Debug, Clone)]
pub struct Inode {
    pub ino: u32,
    pub mode: u16,
    pub size: u64,
    pub flags: u32,
    /// i_block: extent tree root, block map, fast symlink target or inline data.
    pub block: [u8; 60],
    /// The whole on-disk inode, for in-inode extended attributes (inline data).
    raw: Vec<u8>,
    blocks_512: u64,
    file_acl: u64,
}

pub const S_IFMT: u16 = 0o170000;
pub const S_IFREG: u16 = 0o100000;
pub const S_IFDIR: u16 = 0o040000;
pub const S_IFLNK: u16 = 0o120000;

const FL_ENCRYPT: u32 = 0x800;
const FL_HUGE_FILE: u32 = 0x40000;
pub(crate) const FL_EXTENTS: u32 = 0x80000;
pub(crate) const FL_INLINE_DATA: u32 = 0x1000_0000;

impl Inode {
    pub fn kind(&self) -> u16 {
        self.mode & S_IFMT
    }
}

pub(crate) fn le16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

pub(crate) fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

impl<'d> Ext4<'d> {
    pub fn open(mut vol: Volume<'d>) -> Result<Ext4<'d>> {
        let mut sb = vec![0u8; 1024];
        vol.read_at(1024, &mut sb)?;
        if le16(&sb, 0x38) != 0xef53 {
            bail!("no ext2/3/4 superblock");
        }
        let incompat = le32(&sb, 0x60);
        if incompat & INCOMPAT_JOURNAL_DEV != 0 {
            bail!("this is an ext4 external journal, not a filesystem");
        }
        if incompat & (INCOMPAT_COMPRESSION | INCOMPAT_DIRDATA) != 0
            || incompat & !INCOMPAT_KNOWN != 0
        {
            bail!("the ext filesystem uses features disk-image-get-kernel cannot read (incompat 0x{incompat:x})");
        }
        let log = le32(&sb, 0x18);
        if log > 6 {
            bail!("the ext superblock is corrupt (block size 2^{})", log + 10);
        }
        let block_size = 1024u64 << log;
        let rev = le32(&sb, 0x4c);
        let inode_size = if rev == 0 {
            128
        } else {
            le16(&sb, 0x58) as u64
        };
        let desc_size = if incompat & INCOMPAT_64BIT != 0 {
            le16(&sb, 0xfe) as u64
        } else {
            32
        };
        let blocks_count = le32(&sb, 0x4) as u64
            | if incompat & INCOMPAT_64BIT != 0 {
                (le32(&sb, 0x150) as u64) << 32
            } else {
                0
            };
        let first_data_block = le32(&sb, 0x14) as u64;
        let blocks_per_group = le32(&sb, 0x20) as u64;
        let inodes_per_group = le32(&sb, 0x28);
        if !(128..=block_size).contains(&inode_size)
            || !inode_size.is_power_of_two()
            || !(32..=block_size).contains(&desc_size)
            || !desc_size.is_power_of_two()
            || blocks_per_group == 0
            || inodes_per_group == 0
            || blocks_count <= first_data_block
        {
            bail!("the ext superblock is corrupt");
        }
        if blocks_count
            .checked_mul(block_size)
            .is_none_or(|b| b > vol.len())
        {
            bail!(
                "the ext filesystem ({} blocks of {block_size}) is larger than its partition ({} bytes): is the image truncated?",
                blocks_count,
                vol.len()
            );
        }
        let groups = (blocks_count - first_data_block).div_ceil(blocks_per_group);
        Ok(Ext4 {
            vol,
            block_size,
            blocks_count,
            first_data_block,
            blocks_per_group,
            inodes_per_group,
            inodes_count: le32(&sb, 0x0),
            inode_size,
            desc_size,
            groups,
            incompat,
            ro_compat: le32(&sb, 0x64),
            compat: le32(&sb, 0x5c),
            first_meta_bg: le32(&sb, 0x104) as u64,
            backup_bgs: [le32(&sb, 0x24c) as u64, le32(&sb, 0x250) as u64],
            inode_tables: HashMap::new(),
        })
    }

    fn check_blocks(&self, block: u64, count: u64) -> Result<()> {
        if block
            .checked_add(count)
            .is_none_or(|e| e > self.blocks_count)
        {
            bail!("a block pointer ({block}) lies outside the filesystem: it is corrupt");
        }
        Ok(())
    }

    /// Reads whole blocks from `block` on, insisting they lie inside the filesystem.
    pub(crate) fn read_blocks(&mut self, block: u64, buf: &mut [u8]) -> Result<()> {
        self.check_blocks(block, (buf.len() as u64).div_ceil(self.block_size))?;
        self.vol.read_at(block * self.block_size, buf)
    }

    fn has_super(&self, group: u64) -> bool {
        if self.compat & COMPAT_SPARSE_SUPER2 != 0 {
            return group == 0 || self.backup_bgs.contains(&group);
        }
        if group <= 1 || self.ro_compat & RO_COMPAT_SPARSE_SUPER == 0 {
            return true;
        }
        [3u64, 5, 7].iter().any(|&b| {
            let mut p = b;
            while p < group {
                p *= b;
            }
            p == group
        })
    }

    /// Block holding the descriptor of `group`; with meta_bg, each run of groups
    /// that one descriptor block covers keeps it in its own first group.
    fn descriptor_block(&self, group: u64) -> u64 {
        let per_block = self.block_size / self.desc_size;
        let index = group / per_block;
        if self.incompat & INCOMPAT_META_BG == 0 || index < self.first_meta_bg {
            return self.first_data_block + 1 + index;
        }
        let first = index * per_block;
        self.first_data_block + first * self.blocks_per_group + self.has_super(first) as u64
    }

    fn inode_table(&mut self, group: u64) -> Result<u64> {
        if let Some(&t) = self.inode_tables.get(&group) {
            return Ok(t);
        }
        let per_block = self.block_size / self.desc_size;
        let block = self.descriptor_block(group);
        let mut d = vec![0u8; self.desc_size as usize];
        let off = block * self.block_size + (group % per_block) * self.desc_size;
        self.vol.read_at(off, &mut d)?;
        let mut t = le32(&d, 0x8) as u64;
        if self.desc_size >= 64 {
            t |= (le32(&d, 0x28) as u64) << 32;
        }
        self.inode_tables.insert(group, t);
        Ok(t)
    }

    pub fn inode(&mut self, ino: u32) -> Result<Inode> {
        if ino == 0 || ino > self.inodes_count {
            bail!("inode {ino} does not exist: the filesystem is corrupt");
        }
        let group = ((ino - 1) / self.inodes_per_group) as u64;
        if group >= self.groups {
            bail!("inode {ino} lies outside the filesystem: it is corrupt");
        }
        let index = ((ino - 1) % self.inodes_per_group) as u64;
        let table = self.inode_table(group)?;
        let mut raw = vec![0u8; self.inode_size as usize];
        self.check_blocks(
            table.saturating_add(index * self.inode_size / self.block_size),
            1,
        )?;
        self.vol
            .read_at(table * self.block_size + index * self.inode_size, &mut raw)?;
        let mut block = [0u8; 60];
        block.copy_from_slice(&raw[40..100]);
        let flags = le32(&raw, 0x20);
        let mut blocks_512 = le32(&raw, 0x1c) as u64 | (le16(&raw, 0x74) as u64) << 32;
        if flags & FL_HUGE_FILE != 0 {
            blocks_512 *= self.block_size / 512;
        }
        Ok(Inode {
            ino,
            mode: le16(&raw, 0),
            size: le32(&raw, 0x4) as u64 | (le32(&raw, 0x6c) as u64) << 32,
            flags,
            block,
            blocks_512,
            file_acl: le32(&raw, 0x68) as u64 | (le16(&raw, 0x76) as u64) << 32,
            raw,
        })
    }

    pub(crate) fn check_readable(&self, inode: &Inode, path: &str) -> Result<()> {
        if inode.flags & FL_ENCRYPT != 0 {
            bail!("{path} is encrypted (fscrypt); disk-image-get-kernel cannot read it");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::image;
    use crate::kernel::tests::{debian_tree, mkfs, KERNEL};
    use std::process::Command;

    fn with_fs<T>(path: &std::path::Path, f: impl FnOnce(&mut Ext4) -> T) -> T {
        let mut disk = image::open(path).unwrap();
        let len = disk.size();
        let mut fs = Ext4::open(Volume::new(disk.as_mut(), 0, len)).unwrap();
        f(&mut fs)
    }

    /// meta_bg moves each run of descriptors into its own groups: every group's
    /// inode table must be where dumpe2fs says.
    #[test]
    fn descriptors_are_found_with_and_without_meta_bg() {
        let d = tempfile::tempdir().unwrap();
        debian_tree(&d.path().join("t"));
        for (name, features) in [
            ("meta", "meta_bg,^resize_inode"),
            ("plain", "^meta_bg"),
            ("32bit", "^64bit"),
        ] {
            let fs = d.path().join(name);
            mkfs(
                &d.path().join("t"),
                &fs,
                "ext4",
                16,
                &["-b", "1024", "-g", "256", "-O", features],
            );
            let dump =
                String::from_utf8(Command::new("dumpe2fs").arg(&fs).output().unwrap().stdout)
                    .unwrap();
            let tables: Vec<u64> = dump
                .lines()
                .filter_map(|l| l.trim().strip_prefix("Inode table at "))
                .map(|t| t.split('-').next().unwrap().parse().unwrap())
                .collect();
            assert_eq!(tables.len(), 64, "{name}");
            with_fs(&fs, |e| {
                for (g, &want) in tables.iter().enumerate() {
                    assert_eq!(e.inode_table(g as u64).unwrap(), want, "{name}: group {g}");
                }
            });
        }
    }

    #[test]
    fn paths_follow_symlinks_and_missing_ones_are_none() {
        let d = tempfile::tempdir().unwrap();
        debian_tree(&d.path().join("t"));
        let fs = d.path().join("fs");
        mkfs(&d.path().join("t"), &fs, "ext4", 8, &[]);
        with_fs(&fs, |e| {
            let root = e.inode(ROOT_INO).unwrap();
            let link = e
                .list_dir(&root)
                .unwrap()
                .into_iter()
                .find(|x| x.name == b"vmlinuz")
                .unwrap();
            let node = e.inode(link.ino).unwrap();
            assert_eq!(node.kind(), S_IFLNK);
            assert_eq!(
                e.read_link(&node).unwrap(),
                format!("boot/{KERNEL}").into_bytes()
            );
            let via_link = e.lookup(b"/vmlinuz").unwrap().unwrap();
            let direct = e
                .lookup(format!("/boot/./{KERNEL}").as_bytes())
                .unwrap()
                .unwrap();
            assert_eq!((via_link.ino, via_link.kind()), (direct.ino, S_IFREG));
            assert_eq!(
                e.lookup(b"/boot/../boot/..").unwrap().unwrap().ino,
                ROOT_INO
            );
            assert!(e.lookup(b"/boot/nothing").unwrap().is_none());
            assert!(e.lookup(b"/etc/debian_version/x").unwrap().is_none());
        });
    }
}
