//! The command line: `serve` (bind, then run every listener until a
//! signal), `check`, and the operator commands that work directly on the
//! configured store (no server needed) with the same rules the server
//! applies. One file per family: [`args`] (the clap tree, with the settings
//! flags made from the settings table), [`serve`] (`serve`, `check`),
//! [`state`] (`state …`, `lock …`), [`keys`] (credentials and `rekey`),
//! [`migrate`] and [`loadtest`].

pub mod args;
pub mod keys;
pub mod loadtest;
pub mod migrate;
pub mod serve;
pub mod state;

use anyhow::{Context, Result};

use stategate::config::{self, CommandLine, FileConfig, Settings};

pub use args::Command;

/// Loads, merges and validates the settings: the file named by `-c` (or
/// `STATEGATE_CONFIG`) over the defaults file, if one is named, then the
/// environment and the flags given.
pub fn load_settings(line: &CommandLine) -> Result<Settings> {
    let mut file = match args::config_file(line) {
        Some(path) => FileConfig::load(&path)?,
        None => FileConfig::default(),
    };
    if let Some(path) = args::defaults_file(line) {
        file = file
            .over(FileConfig::load(&path)?)
            .with_context(|| format!("defaults file {}", path.display()))?;
    }
    // A variable set to nothing is as if unset (a deployment that passes
    // every variable through, set or not): the file's value stands.
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    Ok(config::resolve(&file, &env, line)?)
}
