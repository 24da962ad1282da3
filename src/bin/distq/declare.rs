//! `distq declare`: create queues on Redis, or change their settings. Queues there outlive
//! every client, so they are declared once (a `master --connect` declares its own).

use distq::Client;

use crate::args::DeclareArgs;
use crate::common::{authkey_for, is_redis, redacted};
use crate::{queue_config, Outcome};

pub fn run(args: DeclareArgs) -> Outcome {
    if !is_redis(&args.connect) {
        return Err(format!(
            "--connect {:?}: declare is for queues on Redis (redis://HOST:PORT); a distq \
             server's queues are the ones it was started with (distq serve --queue NAME)",
            args.connect
        )
        .into());
    }
    let key = authkey_for(&args.connect, &args.key)?;
    let config = queue_config(&args.leases, true)?;
    let client = Client::connect(args.connect.as_str(), &key)?;
    let queues = match args.queues.is_empty() {
        // Results first: a worker waits for `tasks`, and then finds `results` there too.
        true => vec![("results".to_owned(), None), ("tasks".to_owned(), None)],
        false => args
            .queues
            .into_iter()
            .map(|q| (q.name, q.maxsize))
            .collect(),
    };
    for (name, maxsize) in queues {
        client.declare_queue(&name, config.clone().capacity(maxsize))?;
        let bound = maxsize.map_or("unbounded".to_owned(), |m| format!("at most {m} waiting"));
        println!(
            "declared {name} ({bound}, lease {:.0} s, dead letters after {} redeliveries in {name}.dead) on {}",
            config.lease_timeout.as_secs_f64(),
            config.max_redeliveries,
            redacted(&args.connect)
        );
    }
    Ok(())
}
