//! The command lines of the administration tools, apart from their binaries so that the man
//! pages and the shell completions are made from the definitions `--help` prints.

pub mod ctconf;
pub mod ctident;
pub mod ctkmu;
