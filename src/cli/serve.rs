//! `batchd serve`: the daemon's edge. It loads the settings, binds the
//! listener, turns Unix signals into [`Control`] requests and hands all of
//! it to [`batchd::daemon::run`].

use anyhow::Context;
use tokio::sync::mpsc;

use super::{load_config, load_policies, Cli, CliError, ServeArgs};
use batchd::daemon::{Control, Edges, Settings, SettingsError};

pub fn run(cli: &Cli, args: &ServeArgs) -> Result<(), CliError> {
    let reload = {
        let (cli, args) = (cli.clone(), args.clone());
        move || -> Result<Settings, SettingsError> {
            let invalid = |e: CliError| SettingsError::Invalid(e.to_string());
            let config = load_config(&cli, &args).map_err(invalid)?;
            let policies = load_policies(&cli).map_err(invalid)?;
            Settings::new(config, policies)
        }
    };
    // The first load keeps the command line's error kinds (exit codes).
    let settings =
        Settings::new(load_config(cli, args)?, load_policies(cli)?).map_err(anyhow::Error::from)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listen = settings.config.listen;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let edges = Edges::production(&settings, Box::new(reload))
            .context("cannot find the batchd binary to run trials with")?;
        let control = signals().context("cannot install the signal handlers")?;
        // main() blocked SIGHUP until now; one that came early is delivered
        // here, to the handler, as a reload.
        super::set_sighup_blocked(false);
        batchd::daemon::run(settings, listener, control, edges).await?;
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(())
}

/// SIGHUP reloads; SIGTERM and SIGINT stop.
fn signals() -> std::io::Result<mpsc::Receiver<Control>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let (sender, receiver) = mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            let request = tokio::select! {
                _ = terminate.recv() => Control::Shutdown,
                _ = interrupt.recv() => Control::Shutdown,
                _ = hangup.recv() => Control::Reload,
            };
            if sender.send(request).await.is_err() || request == Control::Shutdown {
                break;
            }
        }
    });
    Ok(receiver)
}
