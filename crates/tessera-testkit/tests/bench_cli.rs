//! The benchmark binaries' command lines: `--help` teaches, a wrong argument is named and
//! nothing runs.

use std::process::{Command, Output};

fn run(binary: &str, args: &[&str]) -> Output {
    Command::new(binary)
        .args(args)
        .output()
        .expect("the benchmark binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn help_lists_every_option() {
    for (binary, options) in [
        (
            env!("CARGO_BIN_EXE_p11-bench"),
            &[
                "--seconds",
                "--threads",
                "--ops",
                "--systems",
                "--rounds",
                "--busy-poll",
            ][..],
        ),
        (
            env!("CARGO_BIN_EXE_sm-bench"),
            &["--seconds", "--tcp", "--messages"][..],
        ),
        (
            env!("CARGO_BIN_EXE_channel-bench"),
            &["--seconds", "--idle", "--profile", "--threads"][..],
        ),
    ] {
        let out = run(binary, &["--help"]);
        assert!(out.status.success(), "{binary} --help: {:?}", out.status);
        let help = text(&out.stdout);
        for option in options {
            assert!(
                help.contains(option),
                "{binary} --help lacks {option}:\n{help}"
            );
        }
    }
}

#[test]
fn a_wrong_argument_is_named_and_nothing_runs() {
    for (binary, args, named) in [
        (
            env!("CARGO_BIN_EXE_p11-bench"),
            &["--speed", "3"][..],
            "--speed",
        ),
        (
            env!("CARGO_BIN_EXE_p11-bench"),
            &["--ops", "sing"][..],
            "sing",
        ),
        (
            env!("CARGO_BIN_EXE_p11-bench"),
            &["--rounds", "0"][..],
            "--rounds",
        ),
        (
            env!("CARGO_BIN_EXE_p11-bench"),
            &["--busy-poll", "-1"][..],
            "--busy-poll",
        ),
        (env!("CARGO_BIN_EXE_sm-bench"), &["--bogus"][..], "--bogus"),
        (
            env!("CARGO_BIN_EXE_sm-bench"),
            &["--seconds", "x"][..],
            "--seconds",
        ),
        (
            env!("CARGO_BIN_EXE_channel-bench"),
            &["--idle", "0"][..],
            "--idle",
        ),
        (
            env!("CARGO_BIN_EXE_channel-bench"),
            &["--profile", "10", "--threads", "0"][..],
            "--threads",
        ),
        (
            env!("CARGO_BIN_EXE_channel-bench"),
            &["--threads", "4"][..],
            "--threads",
        ),
    ] {
        let out = run(binary, args);
        assert!(!out.status.success(), "{binary} {args:?} succeeded");
        let error = text(&out.stderr);
        assert!(error.contains(named), "{binary} {args:?}: {error}");
        assert!(
            out.stdout.is_empty(),
            "{binary} {args:?} ran: {}",
            text(&out.stdout)
        );
    }
}
