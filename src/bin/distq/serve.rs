//! `distq serve`: host queues until SIGINT or SIGTERM.

use std::thread;

use distq::Server;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::args::ServeArgs;
use crate::common::{authkey, bind_addr, log_listening, signal_name};
use crate::{journal_config, python_listener, queue_config, server_config, Outcome};

pub fn run(args: ServeArgs) -> Outcome {
    let key = authkey(&args.key)?;
    let bind = bind_addr(&args.bind)?;
    let config = queue_config(&args.leases, false)?;
    let mut builder = Server::builder()
        .authkey(key)
        .config(server_config(&args.server).keepalive(args.keepalive.0));
    if let Some(journal) = journal_config(&args.server) {
        builder = builder.journal(journal);
    }
    if args.queues.is_empty() {
        builder = builder
            .queue_with("tasks", config.clone())
            .queue_with("results", config.clone());
    }
    for spec in args.queues {
        builder = builder.queue_with(spec.name, config.clone().capacity(spec.maxsize));
    }
    // Register for signals before serving, so an early signal is never the default kill.
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    let server = python_listener(builder, &args.server)?.bind(&bind)?;
    log_listening(&server);
    let stop = server.shutdown_handle();
    let signal_control = signals.handle();
    let watcher = thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            log::info!("{}: shutting down", signal_name(signal));
            stop.shutdown();
        }
    });
    let served = server.wait();
    signal_control.close();
    let _ = watcher.join();
    served?;
    log::info!("server stopped");
    Ok(())
}
