use super::gpt::mixed_endian;
use super::mbr::chs;
use super::*;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;

const MIB: u64 = 1 << 20;

fn blank(size: u64) -> (tempfile::TempDir, File) {
    let dir = tempfile::tempdir().unwrap();
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.path().join("disk.raw"))
        .unwrap();
    file.set_len(size).unwrap();
    (dir, file)
}

fn read_file(file: &File) -> Result<Option<Table>> {
    let size = file.metadata().unwrap().len();
    read(&mut Device::new(file.as_fd(), size))
}

fn guid(last: u8) -> [u8; 16] {
    let mut g = [0x11; 16];
    g[15] = last;
    g
}

fn two_gpt_partitions(file: &File) {
    let entries = [
        GptEntry {
            number: 1,
            type_guid: guid(1),
            uuid: guid(2),
            start: MIB,
            size: MIB,
            name: "ESP",
        },
        GptEntry {
            number: 3,
            type_guid: guid(3),
            uuid: guid(4),
            start: 2 * MIB,
            size: 5 * MIB,
            name: "root",
        },
    ];
    write_gpt(file, 8 * MIB, guid(9), &entries).unwrap();
}

#[test]
fn guid_is_mixed_endian() {
    let text = [
        0xc1, 0x2a, 0x73, 0x28, 0xf8, 0x1f, 0x11, 0xd2, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9,
        0x3b,
    ];
    let b = mixed_endian(text);
    assert_eq!(b[..8], [0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11]);
    assert_eq!(b[8..], [0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b]);
}

#[test]
fn chs_of_first_sectors_and_overflow() {
    assert_eq!(chs(0), [0, 1, 0]);
    assert_eq!(chs(2048), [32, 33, 0]);
    assert_eq!(chs(1 << 30), [0xfe, 0xff, 0xff]);
}

#[test]
fn gpt_written_reads_back_with_numbers_and_names() {
    let (_dir, file) = blank(8 * MIB);
    two_gpt_partitions(&file);
    let t = read_file(&file).unwrap().unwrap();
    assert_eq!(t.kind, Kind::Gpt);
    let got: Vec<_> = t
        .partitions
        .iter()
        .map(|p| (p.number, p.name.as_str(), p.start, p.len))
        .collect();
    assert_eq!(got, [(1, "ESP", MIB, MIB), (3, "root", 2 * MIB, 5 * MIB)]);
    assert_eq!(t.partition(3).unwrap().describe(), "partition 3 (\"root\")");
}

#[test]
fn gpt_checksums_are_verified() {
    for (at, says) in [
        (512 + 40, "header checksum"),
        (1024 + 44, "entries' checksum"),
    ] {
        let (_dir, file) = blank(8 * MIB);
        two_gpt_partitions(&file);
        file.write_all_at(&[0x5a], at).unwrap();
        let e = read_file(&file).unwrap_err().to_string();
        assert!(e.contains(says), "{e}");
    }
}

#[test]
fn gpt_entries_past_the_end_are_refused() {
    let (_dir, file) = blank(8 * MIB);
    two_gpt_partitions(&file);
    let mut h = [0u8; 92];
    file.read_exact_at(&mut h, 512).unwrap();
    h[72..80].copy_from_slice(&(1u64 << 40).to_le_bytes());
    h[16..20].fill(0);
    let crc = crc32::crc32(&h);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    file.write_all_at(&h, 512).unwrap();
    let e = read_file(&file).unwrap_err().to_string();
    assert!(e.contains("past the end"), "{e}");
}

#[test]
fn gpt_writer_refuses_what_it_cannot_describe() {
    let (_dir, file) = blank(8 * MIB);
    let entry = |number, start| GptEntry {
        number,
        type_guid: guid(1),
        uuid: guid(2),
        start,
        size: MIB,
        name: "x",
    };
    for (entries, says) in [
        (vec![entry(0, MIB)], "out of 1..=128"),
        (vec![entry(1, MIB), entry(1, 2 * MIB)], "used twice"),
        (vec![entry(1, 0)], "outside the usable sectors"),
        (vec![entry(1, MIB + 1)], "not sector aligned"),
    ] {
        let e = write_gpt(&file, 8 * MIB, guid(9), &entries)
            .unwrap_err()
            .to_string();
        assert!(e.contains(says), "{e}");
    }
}

#[test]
fn mbr_written_reads_back() {
    let (_dir, file) = blank(8 * MIB);
    let entries = [MbrEntry {
        number: 1,
        start: MIB,
        size: 7 * MIB,
        kind: 0x83,
        bootable: true,
    }];
    write_mbr(&file, 0x1234_abcd, &entries).unwrap();
    let t = read_file(&file).unwrap().unwrap();
    assert_eq!(t.kind, Kind::Mbr);
    assert_eq!(
        t.partitions,
        [Partition {
            number: 1,
            name: String::new(),
            start: MIB,
            len: 7 * MIB
        }]
    );
    let mut sector = [0u8; 512];
    file.read_exact_at(&mut sector, 0).unwrap();
    assert_eq!(sector[440..444], 0x1234_abcdu32.to_le_bytes());
    assert_eq!((sector[446], sector[450]), (0x80, 0x83));
}

#[test]
fn a_bare_filesystem_or_a_blank_disk_has_no_table() {
    let (_dir, file) = blank(8 * MIB);
    assert_eq!(read_file(&file).unwrap(), None);
    // A FAT boot sector ends in 0x55AA, as an MBR does.
    let mut boot = [0u8; 512];
    boot[0x52..0x5a].copy_from_slice(b"FAT32   ");
    boot[446 + 4] = 0x0c;
    boot[510..512].copy_from_slice(&[0x55, 0xaa]);
    file.write_all_at(&boot, 0).unwrap();
    assert_eq!(read_file(&file).unwrap(), None);
    let size = file.metadata().unwrap().len();
    assert_eq!(
        filesystem_at(&mut Device::new(file.as_fd(), size), 0, size).unwrap(),
        Some("vfat")
    );
}

#[test]
fn describes_partitions_for_people() {
    let p = Partition {
        number: 3,
        name: "root".into(),
        start: 0,
        len: 0,
    };
    assert_eq!(p.describe(), "partition 3 (\"root\")");
    assert_eq!(
        Partition {
            number: 0,
            ..p.clone()
        }
        .describe(),
        "the whole disk"
    );
    assert_eq!(
        Partition {
            name: String::new(),
            ..p
        }
        .describe(),
        "partition 3"
    );
}
