//! Where a disk's identities come from: filesystem UUIDs, the ESP's volume id,
//! partition and disk GUIDs, ext4's directory hash seed. Each is derived from
//! one build seed and the identity's purpose, so the same seed gives the same
//! bytes (docs/architecture.md §12, reproducible outputs) and different purposes
//! never collide.

use anyhow::{bail, Result};
use sha2::{Digest, Sha256};

/// How the build came by its seed; the manifest and `--dry-run` say which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedOrigin {
    /// `--seed` or DIB_IMAGE_SEED.
    Given,
    /// A hash of the build's inputs, because SOURCE_DATE_EPOCH was set.
    Inputs,
    /// The kernel's randomness: every build gets new identities.
    Random,
}

impl SeedOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            SeedOrigin::Given => "given",
            SeedOrigin::Inputs => "inputs",
            SeedOrigin::Random => "random",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    text: String,
    origin: SeedOrigin,
}

impl Seed {
    /// A seed the caller chose (a manifest's `seed`, to rebuild its image).
    pub fn given(text: &str) -> Result<Seed> {
        let text = text.trim();
        if text.is_empty() || text.len() > 256 || !text.bytes().all(|b| b.is_ascii_graphic()) {
            bail!(
                "seed {text:?}: expected 1 to 256 printable characters without spaces \
                 (a manifest's \"seed\" value works)"
            );
        }
        Ok(Seed {
            text: text.to_string(),
            origin: SeedOrigin::Given,
        })
    }

    /// The seed of a build whose inputs hash to `digest`.
    pub fn from_inputs(digest: &[u8]) -> Seed {
        Seed {
            text: hex(digest),
            origin: SeedOrigin::Inputs,
        }
    }

    pub fn random() -> Result<Seed> {
        let mut bytes = [0u8; 32];
        getrandom(&mut bytes)?;
        Ok(Seed {
            text: hex(&bytes),
            origin: SeedOrigin::Random,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn origin(&self) -> SeedOrigin {
        self.origin
    }

    fn derive(&self, purpose: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"kiln seed\0");
        h.update(self.text.as_bytes());
        h.update([0]);
        h.update(purpose.as_bytes());
        h.finalize().into()
    }

    /// A random-looking (version 4) UUID for `purpose`, lower case.
    pub fn uuid(&self, purpose: &str) -> String {
        let mut b = self.derive(purpose);
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let h = hex(&b[..16]);
        format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }

    /// A FAT volume id for `purpose`, `XXXX-XXXX`.
    pub fn volume_id(&self, purpose: &str) -> String {
        let h = hex(&self.derive(purpose)[..4]).to_ascii_uppercase();
        format!("{}-{}", &h[..4], &h[4..8])
    }

    /// An MBR disk signature for `purpose`: 8 hex digits, never zero (which
    /// some tools read as "no signature").
    pub fn mbr_signature(&self, purpose: &str) -> String {
        let b = self.derive(purpose);
        let mut sig = [b[0], b[1], b[2], b[3]];
        if sig == [0; 4] {
            sig[3] = 1;
        }
        hex(&sig)
    }
}

/// The filesystem identities hooks see before the filesystems exist
/// (fstab and grub.cfg name them), and that [`super::plan_disk`] then uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskIds {
    /// The root filesystem's UUID (a vfat root: its volume id).
    pub root: String,
    /// The ESP's volume id.
    pub esp: String,
}

impl DiskIds {
    pub fn new(seed: &Seed, root_fs: super::FsType) -> DiskIds {
        DiskIds {
            root: match root_fs {
                super::FsType::Vfat => seed.volume_id("root filesystem"),
                _ => seed.uuid("root filesystem"),
            },
            esp: seed.volume_id("esp filesystem"),
        }
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn getrandom(buf: &mut [u8]) -> Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: the pointer and length describe the unfilled part of `buf`.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            bail!("cannot read the kernel's randomness (getrandom): {e}");
        }
        filled += n as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_ids_and_purposes_differ() {
        let a = Seed::given("abc").unwrap();
        let b = Seed::given("abc").unwrap();
        assert_eq!(a.uuid("root"), b.uuid("root"));
        assert_ne!(a.uuid("root"), a.uuid("disk"));
        assert_ne!(a.uuid("root"), Seed::given("abd").unwrap().uuid("root"));
        let u = a.uuid("root");
        crate::disk::tool::parse_uuid(&u).unwrap();
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"));
        let v = a.volume_id("esp");
        assert_eq!((v.len(), &v[4..5]), (9, "-"));
        assert_eq!(a.mbr_signature("disk").len(), 8);
    }

    #[test]
    fn random_seeds_differ_and_bad_given_seeds_are_refused() {
        assert_ne!(Seed::random().unwrap(), Seed::random().unwrap());
        assert_eq!(Seed::random().unwrap().as_str().len(), 64);
        assert!(Seed::given("").is_err());
        assert!(Seed::given("has space").is_err());
        assert_eq!(Seed::given(" x ").unwrap().as_str(), "x");
    }
}
