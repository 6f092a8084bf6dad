//! What `tests/procedure.rs` needs to run documented steps: the marked blocks of a Markdown
//! file, and a terminal that answers the tools' prompts.

pub mod markdown;
pub mod terminal;
