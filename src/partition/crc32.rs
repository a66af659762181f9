//! CRC-32 as the GPT uses it (IEEE 802.3, reflected: zlib's crc32). A few hundred
//! bytes per table do not justify a crate.

const TABLE: [u32; 256] = reflected_table(0xedb8_8320);

/// The byte table of a reflected CRC-32 with polynomial `poly` (reversed form):
/// also ext4's CRC-32C (`0x82f6_3b78`).
pub(crate) const fn reflected_table(poly: u32) -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { poly ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

/// Feeds `data` into a running CRC without the pre- and post-inversion.
pub(crate) fn update(table: &[u32; 256], crc: u32, data: &[u8]) -> u32 {
    data.iter().fold(crc, |c, b| {
        table[((c ^ *b as u32) & 0xff) as usize] ^ (c >> 8)
    })
}

pub fn crc32(data: &[u8]) -> u32 {
    !update(&TABLE, !0, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }
}
