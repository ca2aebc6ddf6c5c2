//! Credentials and keys: `hash-password`, `token new`, `gen-key`, and
//! `rekey`, which seals every state under the first encryption key.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};

use stategate::auth as authn;
use stategate::config::Settings;
use stategate::state::seal;
use stategate::stores;

use super::args::TokenCommand;
use stategate::app::keyring;

/// `stategate hash-password`.
pub fn hash_password() -> Result<()> {
    use std::io::IsTerminal;
    let password = if std::io::stdin().is_terminal() {
        eprint!("password: ");
        rpassword::read_password().context("reading the password")?
    } else {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("reading the password from standard input")?;
        line.trim_end_matches(['\r', '\n']).to_string()
    };
    if password.is_empty() {
        bail!("the password is empty");
    }
    println!(
        "{}",
        authn::hash_secret(&password).map_err(anyhow::Error::msg)?
    );
    Ok(())
}

/// `stategate token …`.
pub fn token(cmd: TokenCommand) -> Result<()> {
    match cmd {
        TokenCommand::New { name } => {
            let token = authn::new_token(&name).map_err(anyhow::Error::msg)?;
            let hash = authn::hash_secret(&token).map_err(anyhow::Error::msg)?;
            println!("token (shown once; give it to the client):\n  {token}");
            println!(
                "for the configuration file, under auth.tokens (adjust its rules: with none it may do nothing):\n\
                 auth:\n  tokens:\n    - name: {name}\n      token_hash: \"{hash}\"\n      rules:\n\
                 \x20       # the states it reaches (globs), and outputs, read, write or admin\n\
                 \x20       - {{keys: \"{name}/**\", access: write}}"
            );
        }
    }
    Ok(())
}

/// `stategate gen-key [FILE]`.
pub fn gen_key(file: Option<&Path>) -> Result<()> {
    let key = seal::generate_key().map_err(anyhow::Error::msg)?;
    let Some(path) = file else {
        println!("{key}");
        return Ok(());
    };
    // Written whole beside it (mode 0600), then given its name only if
    // that name is free: an interrupted run leaves no empty or partial key
    // file behind, and an existing file is never overwritten.
    let dir = stategate::settings::directory_of(path);
    let mut out = tempfile::Builder::new()
        .prefix(".stategate-key-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    writeln!(out, "{key}")?;
    out.as_file().sync_all()?;
    out.persist_noclobber(path)
        .map_err(|e| e.error)
        .with_context(|| {
            format!(
                "cannot create {} (an existing file is never overwritten)",
                path.display()
            )
        })?;
    if let Ok(dir) = std::fs::File::open(dir) {
        dir.sync_all()?;
    }
    eprintln!("wrote a new key to {}", path.display());
    Ok(())
}

/// `stategate rekey`.
pub async fn rekey(settings: &Settings) -> Result<()> {
    let Some(keys) = keyring(settings)? else {
        anyhow::bail!(
            "setting `encryption`: no keys are configured, so there is nothing to seal with"
        );
    };
    if let Some(what) = stores::missing(settings.backend, &settings.store).await? {
        bail!("no {} store here: {what}", settings.backend.name);
    }
    let opened = stores::open(settings.backend, settings.store.clone(), settings.read_only).await?;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes} {elapsed} {msg}")
            .expect("progress template"),
    );
    bar.set_message(format!("sealing under key `{}`", keys.sealing_id()));
    let report = seal::rekey(opened.store.as_ref(), &keys, &|bytes, total| {
        bar.set_length(total);
        bar.inc(bytes);
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    bar.finish_and_clear();
    println!(
        "rekey under `{}`: {} re-sealed, {} sealed for the first time, {} already current, \
         {} changed meanwhile (written under the current key), {} history records re-sealed, \
         {} bytes read",
        keys.sealing_id(),
        report.resealed,
        report.sealed,
        report.current,
        report.raced,
        report.records,
        report.bytes
    );
    Ok(())
}
