use super::values::{parse_abs_size, percent};
use super::*;
use crate::disk::layout::MIB;

fn ok(text: &str) -> DibLayout {
    match parse(text, "DIB_BLOCK_DEVICE_CONFIG") {
        Ok(l) => l,
        Err(e) => panic!("refused: {e:#}\n{text}"),
    }
}

fn err(text: &str) -> String {
    match parse(text, "DIB_BLOCK_DEVICE_CONFIG") {
        Ok(l) => panic!("accepted as {l:?}:\n{text}"),
        Err(e) => format!("{e:#}"),
    }
}

fn layout(l: &'static str, fs: Option<&str>, label: Option<&str>) -> DibLayout {
    DibLayout {
        layout: l,
        fs_type: fs.map(str::to_string),
        root_label: label.map(str::to_string),
    }
}

/// diskimage-builder's vm/block-device-default.yaml.
const DIB_DEFAULT_MBR: &str = "\
# Default single partition loopback

- local_loop:
    name: image0

- partitioning:
    base: image0
    label: mbr
    partitions:
      - name: root
        flags: [ boot, primary ]
        size: 100%
        mkfs:
          mount:
            mount_point: /
            fstab:
              options: \"defaults\"
              fsck-passno: 1
";

/// The same before DIB had a mkfs plugin (DIB 2.0's vm element; still in use).
const DIB_LEGACY_MBR: &str = "\
- local_loop:
    name: image0

- partitioning:
   base: image0
   label: mbr
   partitions:
     - name: root
       flags: [ boot, primary ]
       size: 100%
";

/// diskimage-builder's block_device/tests/config/gpt_efi.yaml (the layout of its
/// block-device-efi element).
const DIB_GPT_EFI: &str = "\
# A sample config that has GPT/bios and EFI boot partitions

- local_loop:
    name: image0

- partitioning:
    base: image0
    label: gpt
    partitions:
      - name: ESP
        type: 'EF00'
        size: 8MiB
        mkfs:
          type: vfat
          mount:
            mount_point: /boot/efi
            fstab:
              options: \"defaults\"
              fsck-passno: 1
      - name: BSP
        type: 'EF02'
        size: 8MiB
      - name: root
        type: '8300'
        size: 100%
        mkfs:
          type: ext4
          mount:
            mount_point: /
            fstab:
              options: \"defaults\"
              fsck-passno: 1
";

/// diskimage-builder's block_device/tests/config/lvm_tree.yaml.
const DIB_LVM: &str = "\
- local_loop:
    name: image0

- partitioning:
    base: image0
    name: mbr
    label: mbr
    partitions:
      - name: root
        base: image0
        flags: [ boot,primary ]
        size: 3G

- lvm:
    base: mbr
    pvs:
      - name: pv
        options: [\"--force\"]
        base: root

    vgs:
      - name: vg
        base: [\"pv\"]
        options: [\"--force\"]

    lvs:
      - name: lv_root
        base: vg
        size: 1800M

      - name: lv_var
        base: vg
        size: 500M

- mkfs:
    name: fs_root
    base: lv_root
    label: \"img-rootfs\"
    type: \"xfs\"
    mount:
      mount_point: /
      fstab:
          options: \"rw,relatime\"
          fsck-passno: 1

- mkfs:
    name: fs_var
    base: lv_var
    type: \"xfs\"
    mount:
      mount_point: /var
      fstab:
          options: \"rw,relatime\"
";

/// diskimage-builder's block_device/tests/config/multiple_partitions_tree.yaml.
const DIB_MULTI_PARTITION: &str = "\
- local_loop:
    name: image0

- partitioning:
    base: image0
    name: mbr
    label: mbr
    partitions:
      - name: root
        flags: [boot, primary]
        size: 54%
        mkfs:
          type: xfs
          uuid: root-uuid-1234
          mount:
            mount_point: /
            fstab:
              options: \"defaults\"
              fsck-passno: 1
      - name: var
        size: 40%
        mkfs:
          type: xfs
          uuid: var-uuid-1234
          mount:
            mount_point: /var
            fstab:
              options: \"defaults\"
              fsck-passno: 1
      - name: swap
        size: 1%
        mkfs:
          type: swap
          mount:
            mount_point: none
            fstab:
              fsck-passno: 0
              options: \"sw\"
";

/// diskimage-builder's default for images without the vm element: a bare
/// filesystem on the loop device.
const DIB_BARE: &str = "\
- local_loop:
    name: image0
    mkfs:
      name: mkfs_root
      mount:
        mount_point: /
        fstab:
          options: \"defaults\"
          fsck-passno: 1
";

#[test]
fn dib_default_mbr() {
    assert_eq!(ok(DIB_DEFAULT_MBR), layout("mbr", None, None));
    assert_eq!(ok(DIB_LEGACY_MBR), layout("mbr", None, None));
}

#[test]
fn dib_gpt_efi_example() {
    assert_eq!(ok(DIB_GPT_EFI), layout("gpt", Some("ext4"), None));
    // Without the BIOS boot partition: UEFI only.
    let efi = DIB_GPT_EFI.replace(
        "      - name: BSP\n        type: 'EF02'\n        size: 8MiB\n",
        "",
    );
    assert_ne!(efi, DIB_GPT_EFI);
    assert_eq!(ok(&efi), layout("efi", Some("ext4"), None));
    // block-device-efi-4k's 4096-byte sectors are not kiln's.
    let e = err(&DIB_GPT_EFI.replace("name: image0\n", "name: image0\n    block_size: 4096\n"));
    assert!(
        e.contains("block_size: 4096") && e.contains("512-byte"),
        "{e}"
    );
    assert_eq!(
        ok(&DIB_GPT_EFI.replace("name: image0\n", "name: image0\n    block_size: 512\n")).layout,
        "gpt"
    );
}

#[test]
fn dib_block_device_gpt_gets_kilns_gpt() {
    // diskimage-builder's block-device-gpt: BIOS boot + root, no ESP.
    let cfg = "\
- local_loop:
    name: image0

- partitioning:
    base: image0
    label: gpt
    partitions:
      - name: BSP
        type: 'EF02'
        size: 8MiB
      - name: root
        flags: [ boot ]
        size: 100%
        mkfs:
          type: ext4
          mount:
            mount_point: /
            fstab:
              options: \"defaults\"
              fsck-passno: 1
";
    assert_eq!(ok(cfg), layout("gpt", Some("ext4"), None));
    // A GPT with nothing to boot from.
    let e = err(&cfg.replace(
        "      - name: BSP\n        type: 'EF02'\n        size: 8MiB\n",
        "",
    ));
    assert!(
        e.contains("no ESP (EF00) and no BIOS boot partition"),
        "{e}"
    );
}

#[test]
fn graph_form_is_read_like_the_tree_form() {
    let cfg = "\
- local_loop:
    name: image0
- partitioning:
    base: image0
    label: gpt
    partitions:
      - name: ESP
        type: EF00
        size: 550MiB
      - name: BSP
        type: EF02
        size: 8MiB
      - name: root
        type: 8300
        size: 100%
- mkfs:
    name: fs_esp
    base: ESP
    type: vfat
- mount:
    name: mnt_esp
    base: fs_esp
    mount_point: /boot/efi
- mkfs:
    name: mkfs_root
    base: root
    type: btrfs
    label: my-root
- mount:
    name: mnt_root
    base: mkfs_root
    mount_point: /
- fstab:
    name: fstab_root
    base: mnt_root
    options: defaults
    fsck-passno: 1
";
    assert_eq!(ok(cfg), layout("gpt", Some("btrfs"), Some("my-root")));
}

#[test]
fn lvm_is_refused() {
    let e = err(DIB_LVM);
    assert!(
            e.starts_with("DIB_BLOCK_DEVICE_CONFIG, line 14: `lvm` is not supported by kiln (no root, no device-mapper); supported: gpt (bios boot + ESP + root), efi (ESP + root), mbr (root), or a bare filesystem"),
            "{e}"
        );
}

#[test]
fn a_var_partition_is_refused() {
    let e = err(DIB_MULTI_PARTITION);
    assert!(
        e.contains("partition `var` (mounted at /var) is not supported"),
        "{e}"
    );
    assert!(e.contains("supported: gpt (bios boot + ESP + root)"), "{e}");
    // A separate /var on GPT, in the graph form.
    let e = err(&DIB_GPT_EFI.replace(
        "      - name: root\n",
        "      - name: var\n        size: 2GiB\n        mkfs:\n          type: ext4\n          \
             mount:\n            mount_point: /var\n      - name: root\n",
    ));
    assert!(
        e.contains("partition `var` (mounted at /var) is not supported"),
        "{e}"
    );
    // Swap, and a PReP boot partition (DIB's ppc layout).
    let swap = format!(
        "{DIB_DEFAULT_MBR}      - name: swap\n        size: 1GiB\n        mkfs:\n          \
             type: swap\n          mount:\n            mount_point: none\n"
    );
    let e = err(&swap);
    assert!(e.contains("partition `swap` (swap)"), "{e}");
    let ppc = "\
- local_loop:
    name: image0
- partitioning:
    base: image0
    label: mbr
    partitions:
      - name: boot
        flags: [ boot, primary ]
        type: '0x41'
        size: 8MiB
      - name: root
        flags: [ primary ]
        size: 100%
";
    let e = err(ppc);
    assert!(
        e.contains("partition `boot` (type 0x41, no filesystem)"),
        "{e}"
    );
}

#[test]
fn root_must_fill_the_disk() {
    let e = err(&DIB_DEFAULT_MBR.replace("size: 100%", "size: 10GiB"));
    assert!(e.contains("line 10"), "{e}");
    assert!(e.contains("kiln sizes root to fill the disk"), "{e}");
    assert!(e.contains("--image-size"), "{e}");
    let e = err(&DIB_BARE.replace("name: image0\n", "name: image0\n    size: 7.5GiB\n"));
    assert!(
        e.contains("`size: 7.5GiB` on local_loop `image0`") && e.contains("--image-size"),
        "{e}"
    );
}

#[test]
fn bare_filesystem() {
    assert_eq!(ok(DIB_BARE), layout("none", None, None));
    let labelled = DIB_BARE.replace(
        "name: mkfs_root\n",
        "name: mkfs_root\n      type: ext4\n      label: root\n",
    );
    assert_eq!(ok(&labelled), layout("none", Some("ext4"), Some("root")));
    // DIB's default root label is kiln's default too.
    let default_label = DIB_BARE.replace(
        "name: mkfs_root\n",
        "name: mkfs_root\n      label: cloudimg-rootfs\n",
    );
    assert_eq!(ok(&default_label), layout("none", None, None));
    // DIB labels other filesystems by their name.
    assert_eq!(
        ok(&DIB_BARE.replace("name: mkfs_root", "name: rootfs"))
            .root_label
            .as_deref(),
        Some("rootfs")
    );
    // The graph form, and a local_loop alone (DIB before its mkfs plugin).
    let graph = "\
- local_loop:
    name: image0
- mkfs:
    name: mkfs_root
    base: image0
    type: ext4
- mount:
    name: mount_mkfs_root
    base: mkfs_root
    mount_point: /
";
    assert_eq!(ok(graph), layout("none", Some("ext4"), None));
    assert_eq!(
        ok("- local_loop:\n    name: image0\n"),
        layout("none", None, None)
    );
    // Mounted anywhere but / it is not a root filesystem.
    let e = err(&DIB_BARE.replace("mount_point: /", "mount_point: /srv"));
    assert!(e.contains("mounted at /srv"), "{e}");
}

#[test]
fn older_dict_form() {
    // DIB 2.0's dict form: plugins as keys, local_loop keyed by image name.
    let cfg = "\
local_loop:
  image0:

partitioning:
  base: image0
  label: mbr
  partitions:
    - name: root
      flags: [ boot, primary ]
      size: 100%
";
    assert_eq!(ok(cfg), layout("mbr", None, None));
    // partitioning keyed by the disk it partitions (DIB's block-device spec).
    let keyed = "\
local_loop:
  image0:
partitioning:
  image0:
    label: gpt
    partitions:
      - name: ESP
        type: EF00
        size: 16MiB
      - name: root
        size: 100%
";
    assert_eq!(ok(keyed), layout("efi", None, None));
    // The tree notation written as a mapping, as DIB's docs show it.
    let tree = "\
local_loop:
  name: image0
  mkfs:
    name: root_fs
    label: r00t
    mount:
      mount_point: /
";
    assert_eq!(ok(tree), layout("none", None, Some("r00t")));
    // The spec's [plugin, options] pairs.
    let pairs = r#"[["local_loop", {"image0": {}}],
 ["partitioning", {"image0": {"label": "mbr",
   "partitions": [{"name": "root", "flags": ["boot"], "size": "100%"}]}}]]"#;
    assert_eq!(ok(pairs), layout("mbr", None, None));
}

#[test]
fn broken_yaml_names_line_and_column() {
    let e = err("- local_loop:\n    name: image0\n  - partitioning: [\n");
    assert!(
        e.starts_with("DIB_BLOCK_DEVICE_CONFIG: invalid YAML at line "),
        "{e}"
    );
    assert!(e.contains("column"), "{e}");
    let e = err("- local_loop:\n    name: \"image0\n");
    assert!(e.contains("invalid YAML at line"), "{e}");
    let e = err("- local_loop:\n\tname: image0\n");
    assert!(e.contains("invalid YAML at line 2"), "{e}");
}

#[test]
fn unsupported_settings_are_refused() {
    let cases: &[(&str, &str, &str)] = &[
        // (replace, with, expected in error)
        (
            "- local_loop:",
            "- raid:",
            "`raid` is not a diskimage-builder block-device plugin",
        ),
        (
            "label: mbr",
            "label: dos",
            "a partition table is mbr or gpt",
        ),
        ("    label: mbr\n", "", "has no `label`"),
        (
            "        mkfs:\n",
            "        mkfs:\n          uuid: 1234\n",
            "kiln chooses the filesystem UUIDs",
        ),
        (
            "        mkfs:\n",
            "        mkfs:\n          opts: \"-i 16384\"\n",
            "--mkfs-options",
        ),
        (
            "options: \"defaults\"",
            "options: \"defaults,noatime\"",
            "fstab options `defaults,noatime` for /",
        ),
        (
            "flags: [ boot, primary ]",
            "flags: [ boot, hidden ]",
            "unknown flag",
        ),
        (
            "mount_point: /",
            "mount_piont: /",
            "unknown key `mount_piont` in mount",
        ),
        (
            "base: image0",
            "base: image1",
            "is on `image1`, not on the disk `image0`",
        ),
        (
            "    base: image0\n",
            "    base: image0\n    align: 4MiB\n",
            "kiln aligns partitions to 1 MiB",
        ),
    ];
    for (from, to, expected) in cases {
        let cfg = DIB_DEFAULT_MBR.replacen(from, to, 1);
        assert_ne!(&cfg, DIB_DEFAULT_MBR, "{from}");
        let e = err(&cfg);
        assert!(e.contains(expected), "{from} -> {to}: {e}");
    }
    // Alignments that divide 1 MiB are kept by kiln's.
    let cfg = DIB_DEFAULT_MBR.replace("    base: image0\n", "    base: image0\n    align: 64KiB\n");
    assert_eq!(ok(&cfg).layout, "mbr");
    // DIB's multi_key_node.yaml.
    let e = err("- mkfs:\n    name: root_fs\n    base: root_part\n  mount:\n    name: m\n");
    assert!(e.contains("exactly one plugin"), "{e}");
    // Two disks, two tables.
    let e = err(&format!(
        "{DIB_DEFAULT_MBR}\n- local_loop:\n    name: data\n"
    ));
    assert!(e.contains("a second `local_loop` (`data`)"), "{e}");
    let e = err("- partitioning:\n    base: image0\n    label: mbr\n    partitions: []\n");
    assert!(e.contains("no `local_loop`"), "{e}");
    // The ESP is kiln's: vfat at /boot/efi.
    let e = err(&DIB_GPT_EFI.replace("type: vfat", "type: ext4"));
    assert!(e.contains("kiln's ESP is vfat"), "{e}");
    let e = err(&DIB_GPT_EFI.replace("mount_point: /boot/efi", "mount_point: /efi"));
    assert!(e.contains("kiln mounts the ESP at /boot/efi"), "{e}");
}

#[test]
fn odd_input_is_an_error_not_a_panic() {
    for text in [
            "",
            "~",
            "[]",
            "{}",
            "42",
            "- 42",
            "- [1, 2, 3]",
            "- local_loop: 7",
            "- {? [a, b] : c}",
            "- local_loop:\n    name: [a]\n",
            "- partitioning:\n    partitions: 5\n",
            "- local_loop:\n    name: image0\n- partitioning:\n    base: image0\n    label: gpt\n    partitions:\n      - size: 100%\n",
            "- local_loop: {name: a}\n---\n- local_loop: {name: b}\n",
            "- local_loop: &a {name: x}\n- local_loop: *a\n",
            "- local_loop: *nope\n",
            "\u{feff}\u{0}",
        ] {
            assert!(parse(text, "X").is_err(), "{text:?}");
        }
    // Deep nesting and alias bombs are bounded.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(err(&deep).contains("invalid YAML"));
    let deep = format!("{}{}", "[".repeat(40), "]".repeat(40));
    assert!(err(&deep).contains("nested too deeply"));
    let deep = format!(
        "a:\n{}",
        (1..200)
            .map(|i| format!("{}b{i}:\n", " ".repeat(i)))
            .collect::<String>()
    );
    assert!(err(&deep).contains("nested too deeply"));
    let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        bomb.push_str(&format!(
            "b{i}: &b{i} [{p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}]\n",
            p = if i == 1 {
                "*a".to_string()
            } else {
                format!("*b{}", i - 1)
            }
        ));
    }
    assert!(err(&bomb).contains("implausibly large"));
}

#[test]
fn mangled_configs_never_panic() {
    // Every prefix of the examples, and bytes swapped in by a fixed generator.
    let samples = [
        DIB_DEFAULT_MBR,
        DIB_GPT_EFI,
        DIB_LVM,
        DIB_MULTI_PARTITION,
        DIB_BARE,
    ];
    for s in samples {
        for (i, _) in s.char_indices() {
            let _ = parse(&s[..i], "X");
        }
    }
    let alphabet = b" \n:-[]{}&*!|>'\"#%@,?0aZ";
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    for s in samples {
        for _ in 0..300 {
            let mut bytes = s.as_bytes().to_vec();
            for _ in 0..3 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let at = (seed as usize) % bytes.len();
                bytes[at] = alphabet[(seed >> 32) as usize % alphabet.len()];
            }
            if let Ok(text) = String::from_utf8(bytes) {
                let _ = parse(&text, "X");
            }
        }
    }
}

#[test]
fn sizes_parse_like_dib() {
    assert_eq!(parse_abs_size("1MiB"), Some(MIB));
    assert_eq!(parse_abs_size("64KiB"), Some(64 * 1024));
    assert_eq!(parse_abs_size("1.5 GB"), Some(1_500_000_000));
    assert_eq!(parse_abs_size("512"), Some(512));
    assert_eq!(parse_abs_size("3G"), Some(3_000_000_000));
    assert_eq!(parse_abs_size("1x"), None);
    assert_eq!(parse_abs_size("1..2M"), None);
    assert_eq!(percent("100%"), Some(100.0));
    assert_eq!(percent("54%"), Some(54.0));
    assert_eq!(percent("100"), None);
}
