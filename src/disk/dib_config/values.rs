//! Reading the values of options: the keys kiln knows, single values, DIB's sizes and
//! mount options.

use super::{refuse, R};
use crate::yaml::Node;

pub(super) fn check_keys(what: &str, fields: &[(String, Node)], known: &[&str]) -> R<()> {
    for (k, v) in fields {
        if !known.contains(&k.as_str()) {
            let mut all = vec!["name", "base"];
            all.extend_from_slice(known);
            return refuse(
                v.line,
                format!("unknown key `{k}` in {what}: kiln reads {}", all.join(", ")),
            );
        }
    }
    Ok(())
}

pub(super) fn scalar<'a>(what: &str, key: &str, v: &'a Node) -> R<&'a str> {
    match v.text() {
        Some(s) => Ok(s.trim()),
        None => refuse(
            v.line,
            format!(
                "`{key}` of {what} must be a single value, not {}",
                v.describe()
            ),
        ),
    }
}

/// DIB's `parse_abs_size_spec`: a decimal number and a unit (KiB..TiB powers of
/// 1024, K/KB..T/TB powers of 1000, B or nothing for bytes).
pub(super) fn parse_abs_size(spec: &str) -> Option<u64> {
    let spec = spec.trim();
    let split = spec
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(spec.len());
    let (num, unit) = spec.split_at(split);
    let unit = unit.strip_prefix(' ').unwrap_or(unit);
    let factor: f64 = match unit {
        "TiB" => (1u64 << 40) as f64,
        "GiB" => (1u64 << 30) as f64,
        "MiB" => (1u64 << 20) as f64,
        "KiB" => 1024.0,
        "TB" | "T" => 1e12,
        "GB" | "G" => 1e9,
        "MB" | "M" => 1e6,
        "KB" | "K" => 1e3,
        "B" | "" => 1.0,
        _ => return None,
    };
    let n: f64 = if num.is_empty() {
        1.0
    } else {
        num.parse().ok()?
    };
    let bytes = n * factor;
    (0.0..1e19).contains(&bytes).then_some(bytes as u64)
}

/// A relative size (`100%`) as its percentage.
pub(super) fn percent(spec: &str) -> Option<f64> {
    spec.trim().strip_suffix('%')?.trim().parse().ok()
}

/// Mount options that say no more than `defaults` does (relatime is the kernel's
/// default).
pub(super) fn plain_options(options: &str, esp: bool) -> bool {
    options.split(',').map(str::trim).all(|o| {
        matches!(
            o,
            "defaults" | "rw" | "relatime" | "auto" | "suid" | "dev" | "exec" | "nouser" | "async"
        ) || (esp && matches!(o, "umask=0077" | "umask=077"))
    })
}
