//! Writes kiln's man pages and shell completions from its clap definitions:
//! `cargo run --release --example gen-docs -- OUT` makes OUT/man/NAME.1 and
//! OUT/completions/{bash/NAME,zsh/_NAME,fish/NAME.fish}. `make` runs it; it is
//! not installed. An example rather than a bin, so that clap_mangen and
//! clap_complete stay dev-dependencies and out of the installed binaries.

use anyhow::{bail, Context, Result};
use clap::{Command, CommandFactory};
use clap_complete::Shell;
use std::path::Path;

/// Every installed command: one line per command.
fn commands() -> Vec<Command> {
    vec![
        kiln::cli::DiskImageArgs::command(),
        kiln::cli::RamdiskArgs::command(),
        kiln::cli::GetKernelArgs::command(),
        kiln::boot::command(),
    ]
}

/// The hidden option that prints the flavours found; commands that have it
/// complete their positional arguments from it.
const LIST_FLAVOURS: &str = "list-flavours";

fn main() -> Result<()> {
    let out = std::env::args_os()
        .nth(1)
        .context("usage: gen-docs OUTDIR (writes OUTDIR/man and OUTDIR/completions)")?;
    let out = Path::new(&out);
    let all = commands();
    let names: Vec<String> = all.iter().map(|c| c.get_name().to_string()).collect();
    for cmd in all {
        let name = cmd.get_name().to_string();
        let lists_flavours = cmd
            .get_arguments()
            .any(|a| a.get_long() == Some(LIST_FLAVOURS));

        let others: Vec<&str> = names
            .iter()
            .filter(|n| **n != name)
            .map(String::as_str)
            .collect();
        write(
            &out.join("man").join(format!("{name}.1")),
            &man_page(&cmd, &others)?,
        )?;

        for (shell, file) in [
            (Shell::Bash, format!("bash/{name}")),
            (Shell::Zsh, format!("zsh/_{name}")),
            (Shell::Fish, format!("fish/{name}.fish")),
        ] {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd.clone(), &name, &mut script);
            let mut script = String::from_utf8(script)?;
            if lists_flavours {
                script = without_list_flavours(shell, &script)
                    .with_context(|| format!("{name}'s {shell} completion"))?;
                if shell == Shell::Bash {
                    script.push_str(&bash_flavours(&cmd));
                }
            }
            write(&out.join("completions").join(file), script.as_bytes())?;
        }
    }
    Ok(())
}

/// clap_mangen's sections, with two changes: the synopsis is clap's usage line
/// (clap_mangen's lists every option without its value), and the after-help
/// text, laid out in columns for a terminal, is kept as it is instead of being
/// filled into paragraphs.
fn man_page(cmd: &Command, see_also: &[&str]) -> Result<Vec<u8>> {
    let usage = cmd.clone().render_usage().to_string();
    let usage = usage.strip_prefix("Usage: ").unwrap_or(&usage).to_string();
    let man = clap_mangen::Man::new(cmd.clone().override_usage(usage));
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    if let Some(after) = cmd.get_after_help() {
        page.extend(preformatted("NOTES", &after.to_string()).as_bytes());
    }
    man.render_version_section(&mut page)?;
    if !see_also.is_empty() {
        let refs: Vec<String> = see_also
            .iter()
            .map(|n| format!("\\fB{}\\fR(1)", roff_escape(n)))
            .collect();
        page.extend(format!(".SH \"SEE ALSO\"\n{}\n", refs.join(", ")).as_bytes());
    }
    Ok(page)
}

/// A section whose lines are set as they are (no filling, no hyphenation).
fn preformatted(title: &str, text: &str) -> String {
    let mut s = format!(".SH {title}\n.nf\n");
    for line in text.lines() {
        s.push_str(&roff_escape(line));
        s.push('\n');
    }
    s.push_str(".fi\n");
    s
}

/// Text safe on a roff text line: backslashes and minus signs escaped, and a
/// leading `.` or `'` (a request) neutralised.
fn roff_escape(line: &str) -> String {
    let escaped = line.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with('.') || escaped.starts_with('\'') {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

/// clap_complete offers hidden options too; `--list-flavours` is for the
/// completion itself, not for people.
fn without_list_flavours(shell: Shell, script: &str) -> Result<String> {
    let long = format!("--{LIST_FLAVOURS}");
    let out = match shell {
        // One `opts="…"` line lists every option.
        Shell::Bash => script.replace(&format!(" {long} "), " "),
        // One line per option: `'--list-flavours[…]' \` and `complete -c … -l list-flavours …`.
        _ => script
            .lines()
            .filter(|l| !l.contains(LIST_FLAVOURS))
            .map(|l| format!("{l}\n"))
            .collect(),
    };
    if out.contains(LIST_FLAVOURS) || out == script {
        bail!("clap_complete's output changed shape: cannot take out {long}");
    }
    Ok(out)
}

/// Appended to clap_complete's bash script: where it would offer options or
/// file names for a positional argument (the word does not start with `-` and
/// does not follow an option that takes a value), offer the flavours the
/// command itself finds (`--list-flavours`, so ELEMENTS_PATH counts).
fn bash_flavours(cmd: &Command) -> String {
    let name = cmd.get_name();
    let mangled = name.replace('-', "__");
    let mut takes_value = Vec::new();
    for arg in cmd.get_arguments() {
        if arg.is_positional() || !arg.get_action().takes_values() {
            continue;
        }
        takes_value.extend(
            arg.get_short_and_visible_aliases()
                .into_iter()
                .flatten()
                .map(|c| format!("-{c}")),
        );
        takes_value.extend(
            arg.get_long_and_visible_aliases()
                .into_iter()
                .flatten()
                .map(|l| format!("--{l}")),
        );
    }
    format!(
        r#"
# kiln: flavour names for the positional arguments (not generated by clap).
_kiln_{mangled}() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev=""
    (( COMP_CWORD > 0 )) && prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    case "$prev" in
        {values}) ;;
        *)
            if [[ "$cur" != -* ]]; then
                COMPREPLY=($(compgen -W "$("$1" --{LIST_FLAVOURS} 2>/dev/null)" -- "$cur"))
                return 0
            fi
            ;;
    esac
    _{mangled} "$@"
}}
complete -F _kiln_{mangled} -o bashdefault -o default {name}
"#,
        values = takes_value.join("|"),
    )
}

/// Complete or not at all: written beside, then renamed into place, so a
/// concurrent `make` never reads half a file.
fn write(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().context("output path has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("out"),
        std::process::id()
    ));
    std::fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))
}
