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

use std::sync::Arc;

use anyhow::{Context, Result};

use stategate::config::{self, CommandLine, FileConfig, Settings};
use stategate::state::seal::{Keyring, SealedStore};
use stategate::state::{Policy, States};
use stategate::stores::{self, Store};

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
    Ok(config::resolve(&file, &|k| std::env::var(k).ok(), line)?)
}

/// The rules' tuning, from the settings.
pub fn policy(settings: &Settings) -> Policy {
    Policy {
        workspace_key_prefix: settings.workspace_key_prefix.clone(),
        history_keep: settings.history_keep,
        protect_lineage: settings.protect_lineage,
    }
}

/// Whether opening a store may create it. Only `serve`, and a migration
/// into its target, do: a wrong path must not leave an empty store behind
/// and answer as if it held nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    Yes,
    No,
}

/// Opens and probes the store, applying the rules to it: state bodies
/// are sealed when `encryption` is set. With [`Create::No`] a store that
/// does not exist yet is refused, saying what is missing.
pub async fn open_states(
    settings: &Settings,
    create: Create,
) -> Result<(States, stores::ProbeReport)> {
    if create == Create::No
        && let Some(what) = stores::missing(settings.backend, &settings.store).await?
    {
        anyhow::bail!(
            "no {} store here: {what}; only `stategate serve` creates a store (relative paths \
             in a configuration file start at the file's directory)",
            settings.backend.name
        );
    }
    let opened = stores::open(settings.backend, settings.store.clone()).await?;
    let store = match keyring(settings)? {
        Some(keys) => Arc::new(SealedStore::new(opened.store, keys)) as Arc<dyn Store>,
        None => opened.store,
    };
    Ok((
        States::new(store, opened.capabilities, policy(settings)),
        opened.report,
    ))
}

/// Opens the store for reading only ([`stores::open_for_reading`]): no
/// probe and nothing created; sealed bodies are opened with the keys.
async fn open_states_for_reading(settings: &Settings) -> Result<States> {
    let store = stores::open_for_reading(settings.backend, settings.store.clone()).await?;
    let capabilities = store.capabilities();
    let store = match keyring(settings)? {
        Some(keys) => Arc::new(SealedStore::new(store, keys)) as Arc<dyn Store>,
        None => store,
    };
    Ok(States::new(store, capabilities, policy(settings)))
}

/// The keys of `encryption`, read now (a missing one stops start-up).
fn keyring(settings: &Settings) -> Result<Option<Arc<Keyring>>> {
    Ok(match &settings.encryption {
        Some(section) => Some(Arc::new(Keyring::load(section, &|var| {
            std::env::var(var).ok()
        })?)),
        None => None,
    })
}
