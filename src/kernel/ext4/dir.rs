//! Directories and paths. Hashed (htree) directories are read linearly: their index
//! blocks look like empty entries to a linear reader, which is how ext2 stays
//! compatible with them.

use super::{le16, le32, Ext4, Inode, FL_EXTENTS, FL_INLINE_DATA, ROOT_INO, S_IFDIR, S_IFLNK};
use anyhow::{bail, Result};

const INCOMPAT_FILETYPE: u32 = 0x2;
const MAX_DIR_BYTES: u64 = 64 << 20;
const MAX_LINK_BYTES: u64 = 4096;
/// As Linux's MAXSYMLINKS.
const MAX_SYMLINKS: u32 = 40;

#[derive(Debug, Clone, PartialEq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: u32,
}

impl Ext4<'_> {
    pub fn list_dir(&mut self, dir: &Inode) -> Result<Vec<DirEntry>> {
        if dir.kind() != S_IFDIR {
            bail!("inode {} is not a directory", dir.ino);
        }
        self.check_readable(dir, &format!("directory inode {}", dir.ino))?;
        let mut out = Vec::new();
        if dir.flags & FL_INLINE_DATA != 0 {
            // Inline: the parent's inode number, then entries in the rest of i_block
            // and in the attribute that continues it.
            let data = self.inline_data(dir)?;
            out.push(DirEntry {
                name: b".".to_vec(),
                ino: dir.ino,
            });
            out.push(DirEntry {
                name: b"..".to_vec(),
                ino: le32(&data, 0),
            });
            self.parse_entries(&data[4..60], &mut out)?;
            self.parse_entries(&data[60..], &mut out)?;
            return Ok(out);
        }
        let data = self.read_to_vec(dir, MAX_DIR_BYTES)?;
        for block in data.chunks(self.block_size as usize) {
            self.parse_entries(block, &mut out)?;
        }
        Ok(out)
    }

    fn parse_entries(&self, b: &[u8], out: &mut Vec<DirEntry>) -> Result<()> {
        let filetype = self.incompat & INCOMPAT_FILETYPE != 0;
        let mut p = 0;
        while p + 8 <= b.len() {
            let ino = le32(b, p);
            let rec = self.rec_len(le16(b, p + 4));
            let name_len = if filetype {
                b[p + 6] as usize
            } else {
                le16(b, p + 6) as usize
            };
            if rec < 8 || p + rec > b.len() || (ino != 0 && 8 + name_len > rec) {
                bail!("a directory block is corrupt (entry at byte {p}: length {rec})");
            }
            if ino != 0 && name_len > 0 {
                out.push(DirEntry {
                    name: b[p + 8..p + 8 + name_len].to_vec(),
                    ino,
                });
            }
            p += rec;
        }
        Ok(())
    }

    /// 64 KiB blocks cannot express their own size in 16 bits; ext4 folds it.
    fn rec_len(&self, raw: u16) -> usize {
        if self.block_size < 65536 {
            return raw as usize;
        }
        match raw {
            0 | 65535 => self.block_size as usize,
            r => (r as usize & 65532) | ((r as usize & 3) << 16),
        }
    }

    /// Looks `path` up from the root, following symlinks (also in the last component).
    /// None where something on the way does not exist or is not a directory.
    pub fn lookup(&mut self, path: &[u8]) -> Result<Option<Inode>> {
        let mut budget = MAX_SYMLINKS;
        self.walk(ROOT_INO, path, &mut budget)
    }

    /// Like `lookup`, for a name in a directory already listed.
    pub fn follow(&mut self, dir: u32, entry: &DirEntry) -> Result<Option<Inode>> {
        let mut budget = MAX_SYMLINKS;
        self.walk(dir, &entry.name, &mut budget)
    }

    fn walk(&mut self, start: u32, path: &[u8], budget: &mut u32) -> Result<Option<Inode>> {
        let mut node = self.inode(if path.first() == Some(&b'/') {
            ROOT_INO
        } else {
            start
        })?;
        for part in path
            .split(|&c| c == b'/')
            .filter(|c| !c.is_empty() && *c != b".")
        {
            if node.kind() != S_IFDIR {
                return Ok(None);
            }
            let Some(e) = self.list_dir(&node)?.into_iter().find(|e| e.name == part) else {
                return Ok(None);
            };
            let child = self.inode(e.ino)?;
            node = if child.kind() == S_IFLNK {
                if *budget == 0 {
                    bail!(
                        "too many levels of symbolic links at {}",
                        String::from_utf8_lossy(path)
                    );
                }
                *budget -= 1;
                let target = self.read_link(&child)?;
                match self.walk(node.ino, &target, budget)? {
                    Some(t) => t,
                    None => return Ok(None),
                }
            } else {
                child
            };
        }
        Ok(Some(node))
    }

    pub fn read_link(&mut self, node: &Inode) -> Result<Vec<u8>> {
        if node.size > MAX_LINK_BYTES {
            bail!(
                "symlink inode {} is {} bytes long: the filesystem is corrupt",
                node.ino,
                node.size
            );
        }
        if self.is_fast_symlink(node) {
            return Ok(node.block[..node.size as usize].to_vec());
        }
        self.read_to_vec(node, MAX_LINK_BYTES)
    }

    /// Short targets live in i_block itself; the tell is that no data block is
    /// allocated (the kernel's ext4_inode_is_fast_symlink).
    fn is_fast_symlink(&self, node: &Inode) -> bool {
        if node.flags & (FL_EXTENTS | FL_INLINE_DATA) != 0 || node.size >= 60 {
            return false;
        }
        let xattr_blocks = if node.file_acl != 0 {
            self.block_size / 512
        } else {
            0
        };
        node.blocks_512.saturating_sub(xattr_blocks) == 0
    }
}
