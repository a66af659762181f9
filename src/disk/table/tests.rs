use super::*;
use crate::disk::{plan_disk, FsType, Seed};
use std::os::unix::fs::FileExt;

const MIB: u64 = 1 << 20;

fn laid_out(layout: &str, size: u64) -> (tempfile::TempDir, std::path::PathBuf, DiskPlan) {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let plan = plan_disk(
        crate::disk::Layout::parse(layout).unwrap(),
        FsType::Ext4,
        size,
        "root",
        vec![],
        &Seed::random().unwrap(),
        None,
    )
    .unwrap();
    lay_out(&raw, &plan).unwrap();
    (dir, raw, plan)
}

fn read_table(raw: &Path) -> Result<Option<Table>> {
    let file = File::open(raw).unwrap();
    let size = file.metadata().unwrap().len();
    partition::read(&mut Device::new(file.as_fd(), size))
}

fn sfdisk_json(path: &Path) -> Option<serde_json::Value> {
    let out = std::process::Command::new("sfdisk")
        .arg("-J")
        .arg(path)
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "sfdisk -J: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).ok()
}

#[test]
fn gpt_written_reads_back_with_sfdisk() {
    let (_dir, raw, plan) = laid_out("gpt", 300 << 20);
    assert_eq!(std::fs::metadata(&raw).unwrap().len(), 300 << 20);

    let ours = read_table(&raw).unwrap().unwrap();
    assert_eq!(ours.kind, Kind::Gpt);
    assert_eq!(
        ours.partitions
            .iter()
            .map(|p| (p.number, p.start, p.len, p.name.as_str()))
            .collect::<Vec<_>>(),
        plan.partitions
            .iter()
            .map(|p| (p.number, p.start, p.size, p.name.as_str()))
            .collect::<Vec<_>>()
    );

    let Some(json) = sfdisk_json(&raw) else {
        crate::test_tools::missing("sfdisk");
        return;
    };
    let t = &json["partitiontable"];
    assert_eq!(t["label"], "gpt");
    assert_eq!(t["id"].as_str().unwrap().to_lowercase(), plan.disk_id);
    assert_eq!(t["firstlba"], 34);
    assert_eq!(t["lastlba"], (300 << 11) - 34);
    let parts = t["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 3);
    for (j, p) in parts.iter().zip(&plan.partitions) {
        assert_eq!(j["start"].as_u64().unwrap() * 512, p.start);
        assert_eq!(j["size"].as_u64().unwrap() * 512, p.size);
        assert_eq!(j["type"].as_str().unwrap().to_lowercase(), p.type_id);
        assert_eq!(j["uuid"].as_str().unwrap().to_lowercase(), p.uuid);
        assert_eq!(j["name"], p.name.as_str());
    }
    // sfdisk prints a warning and still succeeds when the backup table is bad:
    // make it verify both copies.
    let out = std::process::Command::new("sfdisk")
        .arg("--verify")
        .arg(&raw)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !text.contains("corrupt"), "{text}");
}

#[test]
fn corrupted_header_is_detected() {
    let (_dir, raw, plan) = laid_out("efi", 200 << 20);
    let file = OpenOptions::new().write(true).open(&raw).unwrap();
    file.write_all_at(&[0xff], 512 + 40).unwrap();
    assert!(read_table(&raw)
        .unwrap_err()
        .to_string()
        .contains("checksum"));
    let e = format!("{:#}", check(&raw, &plan).unwrap_err());
    assert!(
        e.contains("cannot read the partition table") && e.contains("checksum"),
        "{e}"
    );
}

#[test]
fn mbr_written_reads_back_with_sfdisk() {
    let (_dir, raw, plan) = laid_out("mbr", 100 << 20);
    let t = read_table(&raw).unwrap().unwrap();
    assert_eq!(t.kind, Kind::Mbr);
    assert_eq!(
        t.partitions
            .iter()
            .map(|p| (p.number, p.start, p.len))
            .collect::<Vec<_>>(),
        vec![(1, 1 << 20, 99 << 20)]
    );

    let Some(json) = sfdisk_json(&raw) else {
        crate::test_tools::missing("sfdisk");
        return;
    };
    let t = &json["partitiontable"];
    assert_eq!(t["label"], "dos");
    assert_eq!(t["id"].as_str().unwrap(), format!("0x{}", plan.disk_id));
    let p = &t["partitions"][0];
    assert_eq!(
        (p["start"].as_u64(), p["size"].as_u64()),
        (Some(2048), Some(99 * 2048))
    );
    assert_eq!(p["type"], "83");
    assert_eq!(p["bootable"], true);
}

/// Rewrites the table of `raw` as a hook with sfdisk would: `plan`'s table with
/// the partitions `change` leaves.
fn repartition(raw: &Path, plan: &DiskPlan, change: impl FnOnce(&mut Vec<super::Partition>)) {
    let mut edited = plan.clone();
    change(&mut edited.partitions);
    let file = OpenOptions::new().read(true).write(true).open(raw).unwrap();
    // Old entries must go: the writers only write the entries they are given.
    file.write_all_at(&[0u8; 33 * 512], 512).unwrap();
    write_table(&file, &edited).unwrap();
}

#[test]
fn a_moved_or_resized_partition_is_adopted() {
    for layout in ["gpt", "mbr"] {
        let (_dir, raw, mut plan) = laid_out(layout, 128 * MIB);
        assert_eq!(adopt_table(&raw, &mut plan).unwrap(), []);
        let root = plan.root().unwrap().number;
        repartition(&raw, &plan, |parts| {
            let r = parts.iter_mut().find(|p| p.number == root).unwrap();
            r.start += 2 * MIB;
            r.size -= 4 * MIB;
        });
        let before = plan.root().unwrap().clone();
        let e = check(&raw, &plan).unwrap_err().to_string();
        assert!(e.contains("table changed after kiln adopted it"), "{e}");
        let moved = adopt_table(&raw, &mut plan).unwrap();
        assert_eq!(
            moved,
            [Moved {
                number: root,
                start: before.start + 2 * MIB,
                size: before.size - 4 * MIB
            }],
            "{layout}"
        );
        assert_eq!(plan.root().unwrap().start, before.start + 2 * MIB);
        check(&raw, &plan).unwrap();
    }
}

#[test]
fn a_removed_partition_or_another_kind_of_table_is_refused() {
    let (_dir, raw, mut plan) = laid_out("gpt", 128 * MIB);
    repartition(&raw, &plan, |parts| parts.retain(|p| p.number != 2));
    let e = adopt_table(&raw, &mut plan).unwrap_err().to_string();
    assert!(
        e.contains("no partition 2 (BiosBoot)") && e.contains("numbers 1, 2, 3"),
        "{e}"
    );

    let (_dir, raw, mut plan) = laid_out("gpt", 128 * MIB);
    let mut mbr = plan.clone();
    mbr.table = TableKind::Mbr;
    mbr.disk_id = "1234abcd".into();
    mbr.partitions.truncate(1);
    let file = OpenOptions::new().write(true).open(&raw).unwrap();
    file.write_all_at(&[0u8; 512], 512).unwrap();
    write_table(&file, &mbr).unwrap();
    let e = adopt_table(&raw, &mut plan).unwrap_err().to_string();
    assert!(
        e.contains("now has an MBR where kiln laid out a GPT"),
        "{e}"
    );
}

#[test]
fn overlapping_partitions_and_a_resized_image_are_refused() {
    let (_dir, raw, mut plan) = laid_out("efi", 128 * MIB);
    repartition(&raw, &plan, |parts| parts[1].start -= MIB);
    let e = format!("{:#}", adopt_table(&raw, &mut plan).unwrap_err());
    assert!(
        e.contains("cannot hold kiln's filesystems") && e.contains("overlaps"),
        "{e}"
    );

    let (_dir, raw, mut plan) = laid_out("mbr", 128 * MIB);
    File::options()
        .write(true)
        .open(&raw)
        .unwrap()
        .set_len(129 * MIB)
        .unwrap();
    let e = adopt_table(&raw, &mut plan).unwrap_err().to_string();
    assert!(e.contains("a block-device.d hook resized it"), "{e}");
}

#[test]
fn an_image_without_a_table_keeps_its_plan() {
    let (_dir, raw, mut plan) = laid_out("none", 128 * MIB);
    let before = plan.clone();
    assert_eq!(adopt_table(&raw, &mut plan).unwrap(), []);
    assert_eq!(plan, before);
}
