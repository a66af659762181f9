//! qcow2 (versions 2 and 3) read in place: L1 → L2 → cluster, inflating compressed
//! clusters (deflate, or zstd where the v3 header's compression type says so — kiln's
//! own default) on demand. Only what a read asks for is fetched, which is what makes a
//! 2 GiB image cost the same as a small one.

use super::image::{io_reason, Disk};
use anyhow::{bail, Result};
use miniz_oxide::inflate::core::{decompress, inflate_flags, DecompressorOxide};
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use zstd::stream::raw::{Decoder as ZstdDecoder, InBuffer, Operation, OutBuffer};

const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const COMPRESSED: u64 = 1 << 62;
const ZERO: u64 = 1;

const INCOMPAT_EXTERNAL_DATA: u64 = 1 << 2;
const INCOMPAT_COMPRESSION_TYPE: u64 = 1 << 3;
const INCOMPAT_EXTENDED_L2: u64 = 1 << 4;
/// dirty (0) and corrupt (1) only concern writers and refcounts; reading is safe.
const INCOMPAT_KNOWN: u64 =
    0b11 | INCOMPAT_EXTERNAL_DATA | INCOMPAT_COMPRESSION_TYPE | INCOMPAT_EXTENDED_L2;

/// qemu's own limit; beyond it the header is corrupt, not merely large.
const MAX_L1_BYTES: u64 = 32 << 20;
/// Bounds on the caches, so a hostile image cannot make us hold it all in memory.
const MAX_L2_TABLES: usize = 64;
const CLUSTER_CACHE_BYTES: u64 = 16 << 20;

pub struct Qcow2 {
    file: File,
    file_size: u64,
    cluster_bits: u32,
    l2_bits: u32,
    virtual_size: u64,
    extended_l2: bool,
    /// Set when the header's compression type is zstd (1).
    zstd: Option<ZstdDecoder<'static>>,
    l1: Vec<u64>,
    l2_cache: HashMap<u64, Vec<u64>>,
    /// Inflated clusters, keyed by guest cluster: ext4 metadata reads hit the same one often.
    clusters: HashMap<u64, Vec<u8>>,
    inflater: Box<DecompressorOxide>,
}

fn be32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn be64(b: &[u8], off: usize) -> u64 {
    (be32(b, off) as u64) << 32 | be32(b, off + 4) as u64
}

impl Qcow2 {
    pub fn open(file: File, file_size: u64) -> Result<Qcow2> {
        let mut h = [0u8; 112];
        let n = (file_size.min(h.len() as u64)) as usize;
        file.read_exact_at(&mut h[..n], 0)
            .map_err(|e| anyhow::anyhow!("reading the qcow2 header: {}", io_reason(&e)))?;
        if n < 72 {
            bail!("qcow2 image is truncated: the file ends inside its header ({file_size} bytes)");
        }
        let version = be32(&h, 4);
        let header_len = match version {
            2 => 72,
            3 => be32(&h, 100) as u64,
            v => bail!("qcow2 version {v} is not supported (only 2 and 3)"),
        };
        if version == 3 && (header_len < 104 || n < 104) {
            bail!("qcow2 image is truncated or corrupt: header length {header_len}, file size {file_size}");
        }
        if header_len > file_size {
            bail!("qcow2 image is truncated: the file ends inside its header ({file_size} bytes)");
        }
        let cluster_bits = be32(&h, 20);
        if !(9..=21).contains(&cluster_bits) {
            bail!("qcow2 header is corrupt: cluster_bits {cluster_bits}");
        }
        if be32(&h, 32) != 0 {
            bail!("the qcow2 image is encrypted, which disk-image-get-kernel does not support");
        }
        let backing_off = be64(&h, 8);
        if backing_off != 0 {
            let name = backing_name(&file, file_size, backing_off, be32(&h, 16));
            bail!(
                "the qcow2 image has a backing file ({name}): its kernel may live there; \
                 flatten it first: qemu-img convert -O qcow2 IMAGE flat.qcow2"
            );
        }
        let incompat = if version == 3 { be64(&h, 72) } else { 0 };
        if incompat & INCOMPAT_EXTERNAL_DATA != 0 {
            bail!("the qcow2 image keeps its data in an external file, which disk-image-get-kernel does not support");
        }
        if incompat & !INCOMPAT_KNOWN != 0 {
            bail!(
                "the qcow2 image uses unknown incompatible features (0x{:x})",
                incompat & !INCOMPAT_KNOWN
            );
        }
        let compression = if header_len > 104 { h[104] } else { 0 };
        let zstd = match compression {
            0 => None,
            1 => Some(
                ZstdDecoder::new()
                    .map_err(|e| anyhow::anyhow!("starting the zstd decoder: {e}"))?,
            ),
            t => bail!("qcow2 compression type {t} is unknown"),
        };
        let extended_l2 = incompat & INCOMPAT_EXTENDED_L2 != 0;
        let l2_bits = cluster_bits - 3 - extended_l2 as u32;
        let virtual_size = be64(&h, 24);
        let l1_entries = be32(&h, 36) as u64;
        let l1_off = be64(&h, 40);
        let span = 1u64 << (cluster_bits + l2_bits);
        let needed = virtual_size.div_ceil(span);
        if l1_entries < needed || l1_entries * 8 > MAX_L1_BYTES {
            bail!("qcow2 header is corrupt: {l1_entries} L1 entries for a virtual size of {virtual_size} bytes");
        }
        if l1_off & ((1 << cluster_bits) - 1) != 0 {
            bail!("qcow2 header is corrupt: L1 table offset {l1_off} is not cluster-aligned");
        }
        let l1_end = l1_off.checked_add(l1_entries * 8);
        if l1_end.is_none_or(|e| e > file_size) {
            bail!("qcow2 image is truncated: the L1 table at byte {l1_off} lies beyond the end of the file ({file_size} bytes)");
        }
        let mut raw = vec![0u8; (l1_entries * 8) as usize];
        file.read_exact_at(&mut raw, l1_off)
            .map_err(|e| anyhow::anyhow!("reading the qcow2 L1 table: {}", io_reason(&e)))?;
        let l1 = raw.chunks_exact(8).map(|c| be64(c, 0)).collect();
        Ok(Qcow2 {
            file,
            file_size,
            cluster_bits,
            l2_bits,
            virtual_size,
            extended_l2,
            zstd,
            l1,
            l2_cache: HashMap::new(),
            clusters: HashMap::new(),
            inflater: Box::default(),
        })
    }

    fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// (L2 entry, subcluster bitmap) of a guest cluster; (0, 0) where unallocated.
    fn l2_entry(&mut self, cluster: u64) -> Result<(u64, u64)> {
        let l1e = match self.l1.get((cluster >> self.l2_bits) as usize) {
            Some(&e) => e,
            None => return Ok((0, 0)),
        };
        let table = l1e & OFFSET_MASK;
        if table == 0 {
            return Ok((0, 0));
        }
        let cs = self.cluster_size();
        if !self.l2_cache.contains_key(&table) {
            if !table.is_multiple_of(cs) {
                bail!("qcow2 image is corrupt: L2 table offset {table} is not cluster-aligned");
            }
            if table.checked_add(cs).is_none_or(|e| e > self.file_size) {
                bail!(
                    "qcow2 image is truncated: an L2 table at byte {table} lies beyond the end of the file ({} bytes)",
                    self.file_size
                );
            }
            let mut raw = vec![0u8; cs as usize];
            self.pread(&mut raw, table)?;
            if self.l2_cache.len() >= MAX_L2_TABLES {
                self.l2_cache.clear();
            }
            self.l2_cache
                .insert(table, raw.chunks_exact(8).map(|c| be64(c, 0)).collect());
        }
        let t = &self.l2_cache[&table];
        let i = (cluster & ((1 << self.l2_bits) - 1)) as usize;
        Ok(if self.extended_l2 {
            (t[2 * i], t[2 * i + 1])
        } else {
            (t[i], 0)
        })
    }

    fn pread(&self, buf: &mut [u8], off: u64) -> Result<()> {
        self.file
            .read_exact_at(buf, off)
            .map_err(|e| anyhow::anyhow!("reading the qcow2 file at byte {off}: {}", io_reason(&e)))
    }

    fn read_in_cluster(&mut self, cluster: u64, within: u64, out: &mut [u8]) -> Result<()> {
        let (entry, bitmap) = self.l2_entry(cluster)?;
        if entry & COMPRESSED != 0 {
            return self.read_compressed(cluster, entry, within, out);
        }
        let host = entry & OFFSET_MASK;
        if !self.extended_l2 {
            if entry & ZERO != 0 || host == 0 {
                out.fill(0);
                return Ok(());
            }
            return self.read_host(host, within, out);
        }
        let sub = self.cluster_size() / 32;
        let mut done = 0;
        while done < out.len() {
            let w = within + done as u64;
            let i = w / sub;
            let n = (out.len() - done).min((sub - w % sub) as usize);
            let allocated = bitmap >> i & 1 != 0;
            let zero = bitmap >> (32 + i) & 1 != 0;
            if allocated && !zero {
                if host == 0 {
                    bail!("qcow2 image is corrupt: allocated subcluster without a host cluster");
                }
                self.read_host(host, w, &mut out[done..done + n])?;
            } else {
                out[done..done + n].fill(0);
            }
            done += n;
        }
        Ok(())
    }

    fn read_host(&self, host: u64, within: u64, out: &mut [u8]) -> Result<()> {
        if !host.is_multiple_of(self.cluster_size()) {
            bail!("qcow2 image is corrupt: data cluster offset {host} is not cluster-aligned");
        }
        let at = host + within;
        if at + out.len() as u64 > self.file_size {
            bail!(
                "qcow2 image is truncated: a data cluster at byte {host} lies beyond the end of the file ({} bytes)",
                self.file_size
            );
        }
        self.pread(out, at)
    }

    fn read_compressed(
        &mut self,
        cluster: u64,
        entry: u64,
        within: u64,
        out: &mut [u8],
    ) -> Result<()> {
        let cs = self.cluster_size();
        if within == 0 && out.len() as u64 == cs {
            return self.inflate(entry, out);
        }
        if !self.clusters.contains_key(&cluster) {
            let mut c = vec![0u8; cs as usize];
            self.inflate(entry, &mut c)?;
            if (self.clusters.len() as u64 + 1) * cs > CLUSTER_CACHE_BYTES {
                self.clusters.clear();
            }
            self.clusters.insert(cluster, c);
        }
        let c = &self.clusters[&cluster];
        out.copy_from_slice(&c[within as usize..within as usize + out.len()]);
        Ok(())
    }

    fn inflate(&mut self, entry: u64, out: &mut [u8]) -> Result<()> {
        // The descriptor packs the host offset and a sector count; the split point
        // depends on the cluster size (qcow2 spec, "Compressed Clusters Descriptor").
        let x = 62 - (self.cluster_bits - 8);
        let off = entry & ((1 << x) - 1);
        let sectors = ((entry >> x) & ((1 << (self.cluster_bits - 8)) - 1)) + 1;
        let csize = sectors * 512 - (off & 511);
        if off >= self.file_size {
            bail!(
                "qcow2 image is truncated: a compressed cluster at byte {off} lies beyond the end of the file ({} bytes)",
                self.file_size
            );
        }
        // The last cluster's sector count may overshoot the end of the file.
        let mut data = vec![0u8; csize.min(self.file_size - off) as usize];
        self.pread(&mut data, off)?;
        if let Some(dec) = &mut self.zstd {
            return unzstd(dec, &data, out).map_err(|why| {
                anyhow::anyhow!("qcow2 image is truncated or corrupt: the zstd-compressed cluster at byte {off} {why}")
            });
        }
        self.inflater.init();
        let flags = inflate_flags::TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF;
        let (_, _, produced) = decompress(&mut self.inflater, &data, out, 0, flags);
        if produced != out.len() {
            bail!("qcow2 image is truncated or corrupt: the compressed cluster at byte {off} does not inflate");
        }
        Ok(())
    }
}

/// One zstd frame into exactly `out`, as qemu's qcow2_zstd_decompress reads it: the
/// frame must fill the cluster and end; bytes after it (sector padding) are ignored.
fn unzstd(
    dec: &mut ZstdDecoder<'static>,
    data: &[u8],
    out: &mut [u8],
) -> std::result::Result<(), String> {
    dec.reinit()
        .map_err(|e| format!("does not decompress ({e})"))?;
    let mut input = InBuffer::around(data);
    let mut output = OutBuffer::around(out);
    loop {
        let before = (input.pos(), output.pos());
        let left = dec
            .run(&mut input, &mut output)
            .map_err(|e| format!("does not decompress ({e})"))?;
        let full = output.pos() == output.capacity();
        if left == 0 {
            // The frame ended: it must have filled the cluster exactly.
            return if full {
                Ok(())
            } else {
                Err(format!(
                    "decompresses to {} bytes, short of a cluster",
                    output.pos()
                ))
            };
        }
        if full {
            // The cluster is full but the frame goes on: only its epilogue (a
            // checksum) may remain, never more data.
            let mut spare = [0u8; 1];
            let mut more = OutBuffer::around(&mut spare[..]);
            let left = dec
                .run(&mut input, &mut more)
                .map_err(|e| format!("does not decompress ({e})"))?;
            return match (more.pos(), left) {
                (0, 0) => Ok(()),
                (0, _) => Err("ends inside its zstd frame".to_string()),
                _ => Err("decompresses to more than a cluster".to_string()),
            };
        }
        if (input.pos(), output.pos()) == before {
            return Err("ends inside its zstd frame".to_string());
        }
    }
}

fn backing_name(file: &File, file_size: u64, off: u64, len: u32) -> String {
    let len = len.min(1023) as u64;
    let mut b = vec![0u8; len as usize];
    if off.checked_add(len).is_some_and(|e| e <= file_size)
        && file.read_exact_at(&mut b, off).is_ok()
    {
        return String::from_utf8_lossy(&b).into_owned();
    }
    "unreadable name".to_string()
}

impl crate::partition::Disk for Qcow2 {
    fn size(&self) -> u64 {
        self.virtual_size
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|e| e > self.virtual_size)
        {
            bail!(
                "the partition table or filesystem points past the end of the qcow2 image (byte {offset}, virtual size {})",
                self.virtual_size
            );
        }
        let cs = self.cluster_size();
        let mut done = 0;
        while done < buf.len() {
            let pos = offset + done as u64;
            let within = pos & (cs - 1);
            let n = (buf.len() - done).min((cs - within) as usize);
            self.read_in_cluster(pos >> self.cluster_bits, within, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }
}

impl Disk for Qcow2 {
    fn format(&self) -> &'static str {
        "qcow2"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::Disk as _;
    use std::process::Command;

    fn frame(data: &[u8], checksum: bool) -> Vec<u8> {
        let mut c = zstd::bulk::Compressor::new(3).unwrap();
        c.include_checksum(checksum).unwrap();
        c.compress(data).unwrap()
    }

    #[test]
    fn zstd_frames_fill_the_cluster_exactly() {
        let data: Vec<u8> = (0..65536u32)
            .map(|i| (i % 251) as u8 ^ (i >> 12) as u8)
            .collect();
        let mut dec = ZstdDecoder::new().unwrap();
        let mut out = vec![0u8; data.len()];
        for checksum in [false, true] {
            let f = frame(&data, checksum);
            unzstd(&mut dec, &f, &mut out).unwrap();
            assert!(out == data);
            // Sector padding after the frame is ignored, as qemu does.
            let mut padded = f.clone();
            padded.extend_from_slice(&[0xaa; 511]);
            out.fill(0);
            unzstd(&mut dec, &padded, &mut out).unwrap();
            assert!(out == data);
            let e = unzstd(&mut dec, &f[..f.len() - 5], &mut out).unwrap_err();
            assert!(
                e.contains("ends inside") || e.contains("does not decompress"),
                "{e}"
            );
        }
        let e = unzstd(&mut dec, &frame(&data[..1000], false), &mut out).unwrap_err();
        assert!(e.contains("short of a cluster"), "{e}");
        let mut small = vec![0u8; 1000];
        let e = unzstd(&mut dec, &frame(&data, false), &mut small).unwrap_err();
        assert!(e.contains("more than a cluster"), "{e}");
        let e = unzstd(&mut dec, b"not zstd at all, just text", &mut out).unwrap_err();
        assert!(e.contains("does not decompress"), "{e}");
    }

    /// qemu-img's own zstd clusters (kiln's default output) read back byte for byte.
    #[test]
    fn reads_qemu_img_zstd_clusters() {
        if !crate::test_tools::have("qemu-img") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        let mut data = vec![0u8; 6 << 20];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for (i, chunk) in data.chunks_mut(4096).enumerate() {
            match i % 4 {
                0 => chunk
                    .iter_mut()
                    .enumerate()
                    .for_each(|(j, b)| *b = (j % 7) as u8 + b'a'),
                1 => chunk.iter_mut().for_each(|b| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x as u8;
                }),
                2 => {}
                _ => chunk[..100].copy_from_slice(&[b'k'; 100]),
            }
        }
        std::fs::write(&raw, &data).unwrap();
        for opts in [
            "compression_type=zstd",
            "compression_type=zstd,cluster_size=4096",
            "compression_type=zstd,cluster_size=2M",
        ] {
            let q = dir.path().join("disk.qcow2");
            let _ = std::fs::remove_file(&q);
            let st = Command::new("qemu-img")
                .args([
                    "convert", "-q", "-c", "-f", "raw", "-O", "qcow2", "-o", opts,
                ])
                .arg(&raw)
                .arg(&q)
                .status()
                .unwrap();
            assert!(st.success(), "{opts}");
            let f = File::open(&q).unwrap();
            let size = f.metadata().unwrap().len();
            let mut img = Qcow2::open(f, size).unwrap();
            assert!(
                img.zstd.is_some(),
                "{opts}: header's compression type not seen"
            );
            let mut back = vec![0u8; data.len()];
            img.read_at(0, &mut back).unwrap();
            assert!(back == data, "{opts}: whole-image read differs");
            // Reads inside a cluster go through the cluster cache.
            let mut part = vec![0u8; 1000];
            img.read_at(4096 * 8 + 123, &mut part).unwrap();
            assert!(
                part[..] == data[4096 * 8 + 123..4096 * 8 + 1123],
                "{opts}: partial read differs"
            );
        }
    }
}
