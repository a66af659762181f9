//! DIB_SHOW_IMAGE_USAGE: which files and directories of the finished tree take
//! the room, as diskimage-builder's `du` report (entries of 10 MiB or more).

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;

/// The report as one block of text, biggest first, paths as inside the image.
pub fn report(root: &Path) -> Result<String> {
    let out = Command::new("du")
        .args(["-a", "-x", "-m", "--threshold=10M"])
        .arg(root)
        .output()
        .context("running du for DIB_SHOW_IMAGE_USAGE (package coreutils)")?;
    if !out.status.success() {
        bail!(
            "du {} failed for DIB_SHOW_IMAGE_USAGE: {}",
            root.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(format_report(&String::from_utf8_lossy(&out.stdout), root))
}

fn format_report(du: &str, root: &Path) -> String {
    let prefix = root.to_string_lossy().trim_end_matches('/').to_string();
    let mut rows: Vec<(u64, String)> = du
        .lines()
        .filter_map(|l| {
            let (size, path) = l.split_once('\t')?;
            let inside = path.strip_prefix(prefix.as_str()).unwrap_or(path);
            Some((
                size.trim().parse().ok()?,
                if inside.is_empty() {
                    "/".to_string()
                } else {
                    inside.to_string()
                },
            ))
        })
        .collect();
    rows.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let mut s = String::from("image usage (MiB, entries of 10 MiB or more):");
    for (mib, path) in rows {
        s.push_str(&format!("\n  {mib:>7}  {path}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn biggest_first_paths_inside_the_image() {
        let text = format_report(
            "12\t/w/root/usr/lib\n300\t/w/root\n40\t/w/root/usr\n",
            Path::new("/w/root"),
        );
        assert_eq!(text, "image usage (MiB, entries of 10 MiB or more):\n      300  /\n       40  /usr\n       12  /usr/lib");
    }
}
