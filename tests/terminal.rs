//! What a build shows on a terminal (a real one: tmux) and in a pipe: one live
//! status line rewritten in place, ticking while a hook is silent; plain step
//! lines without escape sequences when stderr is not a terminal; no colour with
//! NO_COLOR.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A hook that talks for ~5 s, then one silent for 4 s: phases long enough to
/// watch without a cold bootstrap.
fn slow_flavour(s: &Scratch) -> PathBuf {
    s.flavour(
        "kiln-slow",
        &[
            ("README.md", "Slow hooks for the terminal tests.\n", false),
            (
                "install.d/50-kiln-slow",
                "#!/bin/bash\nfor i in $(seq 1 10); do echo \"KILN-SLOW line $i\"; sleep 0.5; done\n",
                true,
            ),
            ("install.d/51-kiln-silent", "#!/bin/bash\nsleep 4\n", true),
        ],
    )
}

fn build_args(out: &Path, flavour: &str) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "-t".into(),
        "tar".into(),
        "-o".into(),
        out.display().to_string(),
    ];
    a.extend(IMAGE_FLAVOURS.iter().map(|s| s.to_string()));
    a.push(flavour.into());
    a
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A tmux server of the test's own, running one build in a 160x40 pane.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(s: &Scratch, tmp: &Path, extra_env: &[(&str, &str)]) -> Tmux {
        let flavours = slow_flavour(s);
        Tmux::start_with(s, tmp, extra_env, &flavours, "kiln-slow")
    }

    fn start_with(
        s: &Scratch,
        tmp: &Path,
        extra_env: &[(&str, &str)],
        flavours: &Path,
        flavour: &str,
    ) -> Tmux {
        let e = env();
        let mut vars = vec![
            (
                "PATH".to_string(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            ),
            (
                "KILN_BUILTIN_FLAVOURS".into(),
                e.stage.join("flavours").display().to_string(),
            ),
            ("ELEMENTS_PATH".into(), test_flavours_path(&[flavours])),
            ("TMPDIR".into(), tmp.display().to_string()),
            ("TERM".into(), "xterm-256color".into()),
        ];
        for (k, v) in extra_env {
            vars.push((k.to_string(), v.to_string()));
        }
        let mut prefix = String::new();
        if let Some(u) = &e.user {
            vars.push(("HOME".into(), u.home.display().to_string()));
            vars.push(("USER".into(), u.name.clone()));
            prefix = format!(
                "cd {} && setpriv --reuid={} --regid={} --clear-groups ",
                quote(&u.home.display().to_string()),
                u.uid,
                u.gid
            );
        }
        let env_words: Vec<String> = vars
            .iter()
            .map(|(k, v)| format!("{k}={}", quote(v)))
            .collect();
        let args: Vec<String> = build_args(&s.join("img"), flavour)
            .iter()
            .map(|a| quote(a))
            .collect();
        let script = format!(
            "{prefix}env -i {} {} {}\necho KILN-EXIT=$?\nsleep 900\n",
            env_words.join(" "),
            quote(&e.stage.join("bin/disk-image-create").display().to_string()),
            args.join(" ")
        );
        let path = s.join("run.sh");
        std::fs::write(&path, script).unwrap();
        let socket = format!(
            "kiln-test-{}-{}",
            std::process::id(),
            s.path.file_name().unwrap().to_string_lossy()
        );
        let st = Command::new("tmux")
            .args([
                "-L",
                &socket,
                "new-session",
                "-d",
                "-s",
                "build",
                "-x",
                "160",
                "-y",
                "40",
                "sh",
            ])
            .arg(&path)
            .status()
            .expect("tmux: install it (contrib/setup --tests)");
        assert!(st.success());
        Tmux { socket }
    }

    /// The visible pane; with `escapes`, its colours as escape sequences.
    fn capture(&self, escapes: bool, history: bool) -> String {
        let mut cmd = Command::new("tmux");
        cmd.args(["-L", &self.socket, "capture-pane", "-p", "-t", "build"]);
        if escapes {
            cmd.arg("-e");
        }
        if history {
            cmd.args(["-S", "-"]);
        }
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn wait_for(&self, what: &str, limit: Duration) -> String {
        let until = Instant::now() + limit;
        loop {
            let c = self.capture(true, true);
            if c.contains(what) {
                return c;
            }
            assert!(
                !c.contains("KILN-EXIT="),
                "the build ended before {what:?} showed:\n{c}"
            );
            assert!(Instant::now() < until, "{what:?} never showed:\n{c}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

const BUILD_LIMIT: Duration = Duration::from_secs(900);

#[test]
fn a_terminal_gets_one_live_status_line() {
    let (s, tmp) = scratch_with_tmp("tty-live");
    let t = Tmux::start(&s, &tmp, &[]);
    // While the talking hook runs, its latest line sits on the status line.
    let talking = t.wait_for("KILN-SLOW line 3", BUILD_LIMIT);
    let status: Vec<&str> = talking
        .lines()
        .filter(|l| l.contains("50-kiln-slow"))
        .collect();
    assert_eq!(status.len(), 1, "not one status line:\n{talking}");
    assert!(status[0].contains("KILN-SLOW line"), "{talking}");
    assert!(
        talking.contains("\x1b["),
        "no colour on a terminal:\n{talking}"
    );
    // While the silent one runs, the clock still moves.
    t.wait_for("51-kiln-silent", Duration::from_secs(60));
    let a = t.capture(false, false);
    std::thread::sleep(Duration::from_millis(1300));
    let b = t.capture(false, false);
    assert!(
        a.contains("51-kiln-silent") && b.contains("51-kiln-silent"),
        "{a}\n---\n{b}"
    );
    assert_ne!(a, b, "the status line did not move in 1.3 s:\n{a}");
    let done = t.wait_for("KILN-EXIT=", BUILD_LIMIT);
    assert!(done.contains("KILN-EXIT=0"), "{done}");
    let all = t.capture(false, true);
    // Steps and hook output went by on the status line, not as lines.
    assert!(!all.contains("    | KILN-SLOW"), "{all}");
    let lines = all.lines().filter(|l| !l.trim().is_empty()).count();
    let steps = all.lines().filter(|l| l.contains("(flavour ")).count();
    assert_eq!(steps, 0, "step lines left on the terminal:\n{all}");
    eprintln!("{lines} lines on the terminal:\n{all}");
}

#[test]
fn no_color_means_no_colour() {
    let (s, tmp) = scratch_with_tmp("tty-nocolor");
    let t = Tmux::start(&s, &tmp, &[("NO_COLOR", "1")]);
    let talking = t.wait_for("KILN-SLOW line 2", BUILD_LIMIT);
    let done = t.wait_for("KILN-EXIT=", BUILD_LIMIT);
    assert!(done.contains("KILN-EXIT=0"), "{done}");
    for c in [talking, done] {
        assert!(
            !c.contains("\x1b[3") && !c.contains("\x1b[9"),
            "colour despite NO_COLOR:\n{c:?}"
        );
    }
}

#[test]
fn a_pipe_gets_plain_step_lines() {
    let (s, tmp) = scratch_with_tmp("tty-pipe");
    let flavours = slow_flavour(&s);
    let args = build_args(&s.join("img"), "kiln-slow");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = run_ok(
        kiln("disk-image-create", &args)
            .env("ELEMENTS_PATH", test_flavours_path(&[&flavours]))
            .env("TMPDIR", &tmp),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.lines()
            .any(|l| l.ends_with("] install.d/50-kiln-slow  (flavour kiln-slow)")),
        "{err}"
    );
    assert!(err.contains("\n    | KILN-SLOW line 10\n"), "{err}");
    assert!(
        !o.stderr
            .iter()
            .any(|&b| b == 0x1b || b == 0x1d || b == 0x1e || b == b'\r'),
        "escapes or markers in a pipe:\n{err:?}"
    );
}

#[test]
fn quiet_shows_only_the_result() {
    let (s, tmp) = scratch_with_tmp("tty-quiet");
    let out = s.join("img");
    let mut args = vec!["--quiet", "-t", "tar", "-o", out.to_str().unwrap()];
    args.extend(IMAGE_FLAVOURS);
    let o = run_ok(kiln("disk-image-create", &args).env("TMPDIR", &tmp));
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert!(!lines.is_empty(), "nothing at all");
    assert!(
        lines.iter().all(|l| l.starts_with("wrote ")),
        "more than the result:\n{err}"
    );
    assert!(
        lines.contains(&format!("wrote {}.tar", out.display()).as_str()),
        "{err}"
    );
}

#[test]
fn a_failing_hook_shows_its_last_lines_on_the_terminal() {
    let (s, tmp) = scratch_with_tmp("tty-fail");
    let flavours = s.flavour(
        "kiln-fails",
        &[
            ("README.md", "A hook that fails after some output.\n", false),
            (
                "install.d/50-kiln-fails",
                "#!/bin/bash\nfor i in 1 2 3 4 5; do echo \"KILN-FAIL-DETAIL $i\"; done\nexit 3\n",
                true,
            ),
        ],
    );
    let t = Tmux::start_with(&s, &tmp, &[], &flavours, "kiln-fails");
    let done = t.wait_for("KILN-EXIT=", BUILD_LIMIT);
    let all = t.capture(false, true);
    assert!(done.contains("KILN-EXIT=1"), "{all}");
    assert!(
        all.contains("hook install.d/50-kiln-fails: exit 3"),
        "{all}"
    );
    for i in 1..=5 {
        assert!(all.contains(&format!("KILN-FAIL-DETAIL {i}")), "{all}");
    }
}
