//! File contents: extent trees (ext4) and classic block maps (ext2/3) flattened
//! into runs of contiguous blocks, then read a run at a time.

use super::{le16, le32, Ext4, Inode, FL_EXTENTS, FL_INLINE_DATA};
use anyhow::{bail, Result};

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Run {
    pub logical: u64,
    pub physical: u64,
    pub len: u64,
}

/// Limits that keep a hostile image from making us loop or allocate without end;
/// a kernel or initrd needs a tiny fraction of either.
const MAX_RUNS: usize = 1 << 20;
const MAX_TREE_NODES: u32 = 1 << 16;
const EXTENT_MAGIC: u16 = 0xf30a;
/// Reads are issued in pieces this large: big enough to amortise, small enough to hold.
const CHUNK: usize = 4 << 20;

fn push(runs: &mut Vec<Run>, logical: u64, physical: u64, len: u64) -> Result<()> {
    if physical == 0 || len == 0 {
        return Ok(());
    }
    if let Some(last) = runs.last_mut() {
        if last.logical + last.len == logical && last.physical + last.len == physical {
            last.len += len;
            return Ok(());
        }
    }
    if runs.len() >= MAX_RUNS {
        bail!("a file is fragmented into more than {MAX_RUNS} pieces: the filesystem is corrupt");
    }
    runs.push(Run {
        logical,
        physical,
        len,
    });
    Ok(())
}

impl Ext4<'_> {
    /// The file's data blocks by logical block; holes and unwritten extents are absent.
    pub(crate) fn runs(&mut self, inode: &Inode) -> Result<Vec<Run>> {
        let nblocks = inode.size.div_ceil(self.block_size);
        let mut runs = Vec::new();
        if inode.flags & FL_EXTENTS != 0 {
            let mut budget = MAX_TREE_NODES;
            self.extent_node(&inode.block, None, &mut runs, &mut budget)?;
            runs.sort_by_key(|r| r.logical);
        } else {
            self.block_map(inode, nblocks, &mut runs)?;
        }
        Ok(runs)
    }

    fn extent_node(
        &mut self,
        node: &[u8],
        depth: Option<u16>,
        runs: &mut Vec<Run>,
        budget: &mut u32,
    ) -> Result<()> {
        if node.len() < 12 || le16(node, 0) != EXTENT_MAGIC {
            bail!("an extent tree node is corrupt (bad magic)");
        }
        let entries = le16(node, 2) as usize;
        let d = le16(node, 6);
        if d > 5 || depth.is_some_and(|want| want != d) || 12 + entries * 12 > node.len() {
            bail!("an extent tree node is corrupt (depth {d}, {entries} entries)");
        }
        for e in node[12..12 + entries * 12].chunks_exact(12) {
            if d == 0 {
                let mut len = le16(e, 4) as u64;
                // Above 32768 the length marks an unwritten extent, which reads as zeros.
                if len > 32768 {
                    len = 0;
                }
                let physical = (le16(e, 6) as u64) << 32 | le32(e, 8) as u64;
                self.check_blocks(physical, len)?;
                push(runs, le32(e, 0) as u64, physical, len)?;
            } else {
                if *budget == 0 {
                    bail!("an extent tree has more than {MAX_TREE_NODES} nodes: the filesystem is corrupt");
                }
                *budget -= 1;
                let child = le32(e, 4) as u64 | (le16(e, 8) as u64) << 32;
                let mut block = vec![0u8; self.block_size as usize];
                self.read_blocks(child, &mut block)?;
                self.extent_node(&block, Some(d - 1), runs, budget)?;
            }
        }
        Ok(())
    }

    /// ext2/3: twelve direct pointers, then single, double and triple indirect blocks.
    fn block_map(&mut self, inode: &Inode, nblocks: u64, runs: &mut Vec<Run>) -> Result<()> {
        let ptr = |i: usize| le32(&inode.block, i * 4) as u64;
        let mut logical = 0u64;
        for i in 0..12 {
            if logical >= nblocks {
                return Ok(());
            }
            self.check_blocks(ptr(i), 1)?;
            push(runs, logical, ptr(i), 1)?;
            logical += 1;
        }
        for (level, i) in [(1, 12), (2, 13), (3, 14)] {
            if logical >= nblocks {
                break;
            }
            self.indirect(ptr(i), level, &mut logical, nblocks, runs)?;
        }
        Ok(())
    }

    fn indirect(
        &mut self,
        block: u64,
        level: u32,
        logical: &mut u64,
        nblocks: u64,
        runs: &mut Vec<Run>,
    ) -> Result<()> {
        let per = self.block_size / 4;
        if block == 0 {
            *logical += per.pow(level);
            return Ok(());
        }
        let mut b = vec![0u8; self.block_size as usize];
        self.read_blocks(block, &mut b)?;
        for p in b.chunks_exact(4).map(|c| le32(c, 0) as u64) {
            if *logical >= nblocks {
                break;
            }
            if level == 1 {
                self.check_blocks(p, 1)?;
                push(runs, *logical, p, 1)?;
                *logical += 1;
            } else {
                self.indirect(p, level - 1, logical, nblocks, runs)?;
            }
        }
        Ok(())
    }

    /// Streams the file's bytes as (offset, data) pieces in order; holes are skipped,
    /// so the receiver must treat gaps as zeros.
    pub fn read_file(
        &mut self,
        inode: &Inode,
        sink: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
    ) -> Result<()> {
        if inode.flags & FL_INLINE_DATA != 0 {
            let data = self.inline_data(inode)?;
            return sink(0, &data[..data.len().min(inode.size as usize)]);
        }
        let bs = self.block_size;
        let mut buf = vec![0u8; CHUNK];
        for r in self.runs(inode)? {
            let start = r.logical * bs;
            if start >= inode.size {
                continue;
            }
            let bytes = (r.len * bs).min(inode.size - start);
            let mut done = 0u64;
            while done < bytes {
                let n = (bytes - done).min(CHUNK as u64) as usize;
                // Whole blocks: the tail past i_size is read and then cut off.
                let whole = (n as u64).div_ceil(bs) as usize * bs as usize;
                self.read_blocks(r.physical + done / bs, &mut buf[..whole])?;
                sink(start + done, &buf[..n])?;
                done += n as u64;
            }
        }
        Ok(())
    }

    pub fn read_to_vec(&mut self, inode: &Inode, limit: u64) -> Result<Vec<u8>> {
        if inode.size > limit {
            bail!(
                "inode {} is {} bytes, more than the {limit} expected: the filesystem is corrupt",
                inode.ino,
                inode.size
            );
        }
        let mut v = vec![0u8; inode.size as usize];
        self.read_file(inode, &mut |off, data| {
            v[off as usize..off as usize + data.len()].copy_from_slice(data);
            Ok(())
        })?;
        Ok(v)
    }

    /// Inline data: i_block, continued in the in-inode "system.data" attribute.
    pub(crate) fn inline_data(&self, inode: &Inode) -> Result<Vec<u8>> {
        let mut data = inode.block.to_vec();
        data.extend_from_slice(&inline_xattr(&inode.raw).unwrap_or_default());
        Ok(data)
    }
}

/// The value of "system.data" among the attributes that follow i_extra_isize.
fn inline_xattr(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.len() <= 0x82 {
        return None;
    }
    let start = 128 + le16(raw, 0x80) as usize;
    if start + 4 > raw.len() || le32(raw, start) != 0xea02_0000 {
        return None;
    }
    let base = start + 4;
    let mut p = base;
    while p + 16 <= raw.len() && le32(raw, p) != 0 {
        let name_len = raw[p] as usize;
        let index = raw[p + 1];
        let value_off = le16(raw, p + 2) as usize;
        let value_size = le32(raw, p + 8) as usize;
        let name = raw.get(p + 16..p + 16 + name_len)?;
        if index == 7 && name == b"data" {
            return raw
                .get(base + value_off..base + value_off + value_size)
                .map(<[u8]>::to_vec);
        }
        p += (16 + name_len + 3) & !3;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_blocks_merge_into_one_run() {
        let mut runs = Vec::new();
        push(&mut runs, 0, 100, 1).unwrap();
        push(&mut runs, 1, 101, 1).unwrap();
        push(&mut runs, 2, 0, 1).unwrap();
        push(&mut runs, 3, 103, 2).unwrap();
        assert_eq!(
            runs,
            vec![
                Run {
                    logical: 0,
                    physical: 100,
                    len: 2
                },
                Run {
                    logical: 3,
                    physical: 103,
                    len: 2
                }
            ]
        );
    }
}
