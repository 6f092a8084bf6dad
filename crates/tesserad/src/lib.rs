//! The command line of `tesserad` as a library: the daemon's binary parses it, and the
//! packaging tool makes the man page and the shell completions from the same definition.
#![forbid(unsafe_code)]

pub mod cli;
