//! Message throughput: `lava-send` + `lava-wait` pairs per second over gRPC, for one
//! group and for 100 groups at once. In each group one node sends message ids 0..M in
//! order while another waits for each in turn, so every pair is a send, a blocked wait
//! and its wake-up.

use std::time::{Duration, Instant};

use coordinator::AdminClient;

use crate::local::{self, ADMIN_TOKEN};
use crate::report::Table;

async fn pairs(endpoint: &str, groups: usize, messages: usize) -> Result<Duration, String> {
    let err = |e: coordinator::ClientError| e.to_string();
    let mut admin = AdminClient::connect(endpoint, ADMIN_TOKEN)
        .await
        .map_err(err)?;
    let nodes = vec![
        ("sender".to_string(), "s".to_string()),
        ("waiter".to_string(), "w".to_string()),
    ];
    let mut pairs_of_clients = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..groups {
        let (group, clients) = local::group(&mut admin, endpoint, &nodes).await?;
        ids.push(group);
        pairs_of_clients.push(clients);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for mut clients in pairs_of_clients {
        let (Some(mut waiter), Some(mut sender)) = (clients.pop(), clients.pop()) else {
            return Err("a group without two nodes".into());
        };
        tasks.push(tokio::spawn(async move {
            for i in 0..messages {
                sender
                    .send(&format!("m-{i}"), [("i".to_string(), i.to_string())].into())
                    .await?;
            }
            Ok::<(), coordinator::ClientError>(())
        }));
        tasks.push(tokio::spawn(async move {
            for i in 0..messages {
                waiter.wait(&format!("m-{i}"), None).await?;
            }
            Ok(())
        }));
    }
    for task in tasks {
        task.await.map_err(|e| e.to_string())?.map_err(err)?;
    }
    let took = started.elapsed();
    for group in ids {
        admin.close_group(&group).await.map_err(err)?;
    }
    Ok(took)
}

pub fn run(runtime: &tokio::runtime::Runtime) -> Result<Table, String> {
    let running = local::start(runtime, false)?;
    let endpoint = format!("http://{}", running.grpc_addr);
    let mut table = Table::new(
        "Messages: `lava-send` + `lava-wait` pairs per second, gRPC on loopback",
        "bash scripts/bench.sh throughput",
        &[
            "groups at once",
            "pairs per group",
            "runs",
            "pairs/s (median)",
            "slowest run",
        ],
    );
    for (groups, messages) in [(1, 5000), (100, 200)] {
        eprintln!("bench: throughput, {groups} group(s)");
        let mut rates = Vec::new();
        for _ in 0..3 {
            let took = runtime.block_on(pairs(&endpoint, groups, messages))?;
            rates.push((groups * messages) as f64 / took.as_secs_f64());
        }
        rates.sort_by(f64::total_cmp);
        table.row(vec![
            groups.to_string(),
            messages.to_string(),
            rates.len().to_string(),
            format!("{:.0}", rates[rates.len() / 2]),
            format!("{:.0}", rates[0]),
        ]);
    }
    runtime.block_on(running.shutdown());
    table.notes.push(
        "Server and clients share the machine's cores. LAVA's coordinator has no \
         counterpart figure: its client sleeps `poll_delay` after every `wait` reply, so a \
         wait that is not already satisfied costs at least that long."
            .into(),
    );
    Ok(table)
}
