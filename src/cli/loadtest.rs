//! `loadtest`: Terraform's cycle from many clients against a deployment.

use anyhow::{Result, bail};

use super::args::LoadtestArgs;

/// `stategate loadtest`.
pub async fn loadtest(args: LoadtestArgs) -> Result<()> {
    if args.clients == 0 {
        bail!("--clients must be at least 1");
    }
    let plan = stategate::loadtest::Plan {
        duration: stategate::settings::parse_duration("--duration", &args.duration)?,
        url: args.url,
        clients: args.clients,
        state_bytes: args.state_bytes,
        shared_key: args.shared_key,
        new_states: args.new_states,
        user: args.user,
        password: args.password,
    };
    let bar = indicatif::ProgressBar::new_spinner();
    let total = plan.duration;
    let unit = if plan.new_states {
        "new states"
    } else {
        "cycles"
    };
    let report = stategate::loadtest::run(plan, |cycles, elapsed| {
        bar.set_message(format!(
            "{cycles} {unit}, {:.0} {unit}/s, {:.0}s of {:.0}s",
            cycles as f64 / elapsed.as_secs_f64().max(0.001),
            elapsed.as_secs_f64(),
            total.as_secs_f64()
        ));
        bar.tick();
    })
    .await
    .map_err(anyhow::Error::msg)?;
    bar.finish_and_clear();
    print!("{}", report.render());
    if !report.clean() {
        bail!("unexpected answers (above)");
    }
    Ok(())
}
