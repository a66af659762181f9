//! OVMF (UEFI firmware for QEMU): where distributions put it.

use anyhow::{bail, Result};
use std::path::PathBuf;

const OVMF_CODE: &[&str] = &[
    "/usr/share/OVMF/OVMF_CODE_4M.fd",
    "/usr/share/OVMF/OVMF_CODE.fd",
    "/usr/share/edk2/ovmf/OVMF_CODE.fd",
    "/usr/share/edk2/x64/OVMF_CODE.fd",
];
const OVMF_VARS: &[&str] = &[
    "/usr/share/OVMF/OVMF_VARS_4M.fd",
    "/usr/share/OVMF/OVMF_VARS.fd",
    "/usr/share/edk2/ovmf/OVMF_VARS.fd",
    "/usr/share/edk2/x64/OVMF_VARS.fd",
];

/// The firmware code and the variables template, which must be a matching pair:
/// both 4M builds, or both of the older 2M layout.
pub fn ovmf() -> Result<(PathBuf, PathBuf)> {
    Ok((
        find("KILN_OVMF_CODE", OVMF_CODE)?,
        find("KILN_OVMF_VARS", OVMF_VARS)?,
    ))
}

fn find(var: &str, candidates: &[&str]) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(var).filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("{var}={}: no such file", p.display());
        }
        return Ok(p);
    }
    match candidates.iter().map(PathBuf::from).find(|p| p.is_file()) {
        Some(p) => Ok(p),
        None => bail!(
            "--uefi: no OVMF firmware at {}: install the Debian package ovmf, or set {var}",
            candidates.join(", ")
        ),
    }
}
