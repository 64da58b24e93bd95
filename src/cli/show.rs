//! `batchd gpus`, `batchd policies` and `batchd config`: what batchd sees.

use super::{load_config, load_policies, Cli, CliError, GpusArgs, PoliciesArgs, ServeArgs};
use batchd::gpu::{open_probe, Inventory};

pub fn config(cli: &Cli, args: &ServeArgs) -> Result<(), CliError> {
    let config = load_config(cli, args)?;
    let text = toml::to_string_pretty(&config).map_err(anyhow::Error::from)?;
    print!("{text}");
    Ok(())
}

pub fn gpus(args: &GpusArgs) -> Result<(), CliError> {
    let probe = open_probe();
    let inventory = Inventory::take(probe.as_deref());
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&inventory).map_err(anyhow::Error::from)?
        );
    } else {
        print!("{}", inventory.render());
    }
    Ok(())
}

pub fn policies(cli: &Cli, args: &PoliciesArgs) -> Result<(), CliError> {
    let set = load_policies(cli)?;
    if args.json {
        let list: Vec<_> = set
            .iter()
            .map(|(policy, origin)| serde_json::json!({"policy": policy, "origin": origin}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&list).map_err(anyhow::Error::from)?
        );
        return Ok(());
    }
    let width = set.names().map(str::len).max().unwrap_or(8);
    for (policy, origin) in set.iter() {
        let origin = match origin {
            batchd::policy::PolicyOrigin::Builtin => String::new(),
            batchd::policy::PolicyOrigin::File(path) => format!(" [{}]", path.display()),
        };
        println!(
            "{:<width$}  {} ({}){origin}",
            policy.name,
            policy.description,
            policy.summary()
        );
    }
    Ok(())
}
