//! diskimage-builder's options as a real build honours them: one warm tar
//! build run from a scratch directory with no `-o`, DIB_CHECKSUM=md5,
//! DIB_SHOW_IMAGE_USAGE and `--logfile`.

mod common;

use common::*;
use std::process::Command;

#[test]
fn default_name_md5_only_and_logfile() {
    let (s, tmp) = scratch_with_tmp("dib-options");
    // A hook's stderr, written inside the namespaces, must reach the log too.
    let hook = "#!/bin/sh\necho kiln-logfile-marker-from-a-hook >&2\n";
    let flavours = s.flavour(
        "log-marker",
        &[
            ("README.md", "marker\n", false),
            ("install.d/50-marker", hook, true),
        ],
    );
    let log = s.join("build.log");
    let mut args = vec!["-t", "tar", "--logfile", log.to_str().unwrap()];
    args.extend(IMAGE_FLAVOURS);
    args.push("log-marker");
    let mut cmd = kiln("disk-image-create", &args);
    cmd.env("ELEMENTS_PATH", test_flavours_path(&[&flavours]))
        .env("TMPDIR", &tmp)
        .env("DIB_CHECKSUM", "md5")
        .env("DIB_SHOW_IMAGE_USAGE", "1")
        .current_dir(&s.path);
    let o = run_ok(&mut cmd);

    // -o defaults to `image` in the current directory; only the md5 file.
    assert!(s.join("image.tar").is_file(), "{}", output_text(&o));
    assert!(
        !s.join("image.tar.sha256").exists(),
        "DIB_CHECKSUM=md5 wrote a sha256 file"
    );
    let check = Command::new("md5sum")
        .args(["-c", "--strict", "image.tar.md5"])
        .current_dir(&s.path)
        .output()
        .unwrap();
    assert!(check.status.success(), "md5sum -c: {}", output_text(&check));

    // --logfile implies DIB_QUIET=1: the terminal gets only the log's name.
    let terminal = String::from_utf8_lossy(&o.stderr);
    assert!(terminal.contains("Output logs going to:"), "{terminal}");
    assert!(
        !terminal.contains("marker-from-a-hook") && !terminal.contains("timings:"),
        "quiet build printed:\n{terminal}"
    );

    // The log has everything, every line stamped `YYYY-MM-DD HH:MM:SS.mmm | `.
    let text = std::fs::read_to_string(&log).unwrap();
    // DIB_SHOW_IMAGE_USAGE: the du report, paths as inside the image.
    for needle in [
        "marker-from-a-hook",
        "image usage (MiB",
        "  /usr\n",
        "wrote image.tar",
        "timings:",
        "kiln peak RSS",
    ] {
        assert!(text.contains(needle), "log lacks {needle:?}:\n{text}");
    }
    for line in text.lines() {
        let b = line.as_bytes();
        let stamped = b.len() >= 26
            && b[4] == b'-'
            && b[10] == b' '
            && b[19] == b'.'
            && &line[23..26] == " | "
            && line[..4].chars().all(|c| c.is_ascii_digit());
        assert!(stamped, "unstamped log line {line:?}");
    }
    assert_no_leftovers(&tmp, &s.path, &["image.tar", "image.tar.md5", "build.log"]);
}
