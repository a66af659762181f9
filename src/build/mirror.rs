//! The default Debian mirror is whatever the host's apt already uses: kiln names
//! no package host of its own.

use anyhow::{anyhow, bail, Result};
use std::path::Path;

/// The first `deb` source of the host whose suite is a plain release name
/// (not -security, -updates or -backports).
pub fn from_host_apt() -> Result<String> {
    find_in_host_apt(plain_suite).ok_or_else(|| {
        anyhow!(
            "no Debian mirror found in the host's apt sources (/etc/apt/sources.list, /etc/apt/sources.list.d): \
             give one with --mirror URL or DIB_DISTRIBUTION_MIRROR"
        )
    })
}

/// The host's security archive (a `deb` source whose suite ends in `-security`),
/// for diskimage-builder's Debian elements, which otherwise name a host of their own.
pub fn security_from_host_apt() -> Option<String> {
    find_in_host_apt(|s| s.ends_with("-security"))
}

fn find_in_host_apt(suite: fn(&str) -> bool) -> Option<String> {
    let mut texts = Vec::new();
    for f in ["/etc/apt/sources.list"] {
        if let Ok(t) = std::fs::read_to_string(f) {
            texts.push((f.to_string(), t));
        }
    }
    if let Ok(rd) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut names: Vec<_> = rd.flatten().map(|e| e.path()).collect();
        names.sort();
        for p in names {
            if let Ok(t) = std::fs::read_to_string(&p) {
                texts.push((p.display().to_string(), t));
            }
        }
    }
    for (name, text) in &texts {
        let found = if name.ends_with(".sources") {
            deb822(text, suite)
        } else if name.ends_with(".list") {
            one_line(text, suite)
        } else {
            None
        };
        if found.is_some() {
            return found;
        }
    }
    None
}

fn plain_suite(s: &str) -> bool {
    !s.is_empty() && !s.contains('-') && !s.contains('/')
}

fn one_line(text: &str, suite_ok: fn(&str) -> bool) -> Option<String> {
    text.lines().find_map(|l| {
        let l = l.trim();
        let rest = l.strip_prefix("deb ")?;
        let mut words = rest.split_whitespace().filter(|w| !w.starts_with('['));
        // Options in brackets may contain spaces only in pathological files; skip them.
        let uri = words.next()?;
        let suite = words.next()?;
        (suite_ok(suite) && uri.contains("://")).then(|| uri.trim_end_matches('/').to_string())
    })
}

fn deb822(text: &str, suite_ok: fn(&str) -> bool) -> Option<String> {
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim().eq_ignore_ascii_case(name)).then(|| v.trim().to_string())
            })
        };
        if field("Enabled").is_some_and(|v| v.eq_ignore_ascii_case("no")) {
            continue;
        }
        if !field("Types").is_some_and(|t| t.split_whitespace().any(|w| w == "deb")) {
            continue;
        }
        let (Some(uris), Some(suites)) = (field("URIs"), field("Suites")) else {
            continue;
        };
        if suites.split_whitespace().any(suite_ok) {
            if let Some(uri) = uris.split_whitespace().find(|u| u.contains("://")) {
                return Some(uri.trim_end_matches('/').to_string());
            }
        }
    }
    None
}

/// A mirror given by the user must at least look like a URL apt accepts.
pub fn check(mirror: &str) -> Result<()> {
    let ok = ["http://", "https://", "file://", "copy://", "mirror+"]
        .iter()
        .any(|p| mirror.starts_with(p));
    if !ok {
        bail!("mirror `{mirror}` is not a URL apt understands (http://, https://, file:// …)");
    }
    if let Some(path) = mirror.strip_prefix("file://") {
        if !Path::new(path).is_dir() {
            bail!("mirror `{mirror}`: {path} is not a directory");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb822_skips_security_and_updates() {
        let t = "Types: deb\nURIs: http://example.org/debian-security\nSuites: bookworm-security\n\n\
                 Types: deb\nURIs: http://example.org/debian/\nSuites: bookworm bookworm-updates\nComponents: main\n";
        assert_eq!(
            deb822(t, plain_suite).as_deref(),
            Some("http://example.org/debian")
        );
        assert_eq!(
            deb822(t, |s| s.ends_with("-security")).as_deref(),
            Some("http://example.org/debian-security")
        );
    }

    #[test]
    fn one_line_format_with_options() {
        let t = "# c\ndeb-src http://example.org/source bookworm main\ndeb [arch=amd64] http://example.org/debian bookworm main\n";
        assert_eq!(
            one_line(t, plain_suite).as_deref(),
            Some("http://example.org/debian")
        );
    }
}
