//! `docs/flags.md` is every subcommand's `--help` as the binaries print it
//! now: `lazyavg` and `lazyavg-bench`, each command found by walking the
//! `Commands:` lists, so a new subcommand or flag shows up by itself. With
//! `LAZYAVG_BLESS=1` the test rewrites the file instead of comparing.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::lazyavg_bench;

/// The one command that regenerates the reference, named in the failure.
const REGENERATE: &str = "LAZYAVG_BLESS=1 cargo test --test integration flags::";

#[test]
fn docs_flags_md_is_what_the_binaries_print() {
    let lazyavg = PathBuf::from(env!("CARGO_BIN_EXE_lazyavg"));
    let mut doc = format!(
        "# Flag reference\n\n\
         Every subcommand's `--help`, exactly as the binaries `lazyavg` and `lazyavg-bench` print it. \
         Generated, do not edit: after changing a flag, regenerate it with\n\n    {REGENERATE}\n\n\
         Without `LAZYAVG_BLESS=1` that test fails while this file is out of date. Debugging and test \
         knobs are hidden from `--help`, so not listed here; their doc comments in \
         `coordinator/src/config/settings.rs` and `worker/src/config.rs` say what they do and why they are hidden.\n"
    );
    for (name, binary) in [("lazyavg", lazyavg), ("lazyavg-bench", lazyavg_bench())] {
        reference(&binary, &[name.to_owned()], &mut doc);
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/flags.md");
    if std::env::var_os("LAZYAVG_BLESS").is_some_and(|v| v == "1") {
        fs::write(&path, &doc).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        return;
    }
    let written = fs::read_to_string(&path).unwrap_or_default();
    if written != doc {
        let line = written
            .lines()
            .zip(doc.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(written.lines().count().min(doc.lines().count()));
        panic!(
            "{} is not what the binaries print now (first difference at line {}: {:?} there, {:?} now); \
             regenerate it with `{REGENERATE}` and commit it",
            path.display(),
            line + 1,
            written.lines().nth(line).unwrap_or("<end>"),
            doc.lines().nth(line).unwrap_or("<end>"),
        );
    }
}

/// Appends the `--help` of `binary` with the subcommand path `command[1..]`
/// as a section, then that of each of its subcommands.
fn reference(binary: &Path, command: &[String], doc: &mut String) {
    let mut cmd = Command::new(binary);
    // No environment: flags read from variables (`[env: LAZYAVG_DATA_DIR=...]`)
    // would otherwise show this machine's values.
    cmd.env_clear().args(&command[1..]).arg("--help");
    let output = cmd.output().unwrap_or_else(|e| panic!("running {}: {e}", binary.display()));
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "`{} --help` failed: {}",
        command.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    doc.push_str(&format!("\n## `{}`\n\n```text\n{}\n```\n", command.join(" "), help.trim_end()));
    for sub in subcommands(&help) {
        let mut path = command.to_vec();
        path.push(sub);
        reference(binary, &path, doc);
    }
}

/// The names listed under `Commands:` in a `--help`, without clap's `help`.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim_end() != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        // Only entries: continuation lines of a wrapped description are indented further.
        .filter(|l| !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

/// The debugging and test knobs: absent from `--help` (issue 13: it lists
/// what users set), yet parsed, as an invalid value for each shows.
#[test]
fn debugging_knobs_are_hidden_from_help_but_parsed() {
    let lazyavg = Path::new(env!("CARGO_BIN_EXE_lazyavg"));
    for (subcommand, flag) in [
        ("coordinator", "--dump-rounds"),
        ("coordinator", "--bench-rounds"),
        ("coordinator", "--inject-checkpoint-fault"),
        ("worker", "--debug-slowdown"),
        ("worker", "--exit-with-stdin"),
    ] {
        let help = Command::new(lazyavg).args([subcommand, "--help"]).output().expect("running lazyavg");
        assert!(help.status.success());
        assert!(!String::from_utf8_lossy(&help.stdout).contains(flag), "`lazyavg {subcommand} --help` lists {flag}");
        let run =
            Command::new(lazyavg).args([subcommand, &format!("{flag}=not-a-value")]).output().expect("running lazyavg");
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(2), "{stderr}");
        // Known to clap: a bad value (or, for a switch, a value it does not take), not an unknown flag.
        assert!(stderr.contains(&format!("'{flag}")) && !stderr.contains("unexpected argument"), "{stderr}");
    }
}
