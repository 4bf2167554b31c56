//! The node agent: the `lava-*` commands test shells run inside host devices and guests
//! (`lava-send`, `lava-wait`, `lava-wait-all`, `lava-sync`, `lava-network`,
//! `lava-start-vms`, `lava-wait-for-vms`, `lava-self`, `lava-role`, `lava-group`,
//! `lava-test-case`, `lava-test-set`, `lava-test-raise`).
//!
//! One static binary, called through links named after the commands (`node-agent install
//! DIR` makes them) or as `node-agent lava-sync ready`. It talks to the coordinator over
//! gRPC when the dispatcher gave it an address and token, and through console markers the
//! dispatcher relays otherwise. Output, cache files and exit codes follow LAVA's: 0 done,
//! 1 the MultiNode call failed (nack, timeout, a peer failed), 2 wrong usage,
//! 3 no way to reach the coordinator.

mod cache;
mod commands;
mod env;
mod helpers;
mod netinfo;
mod run;
mod transport;

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().collect();
    let invoked = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("node-agent")
        .to_string();
    let command = if invoked.starts_with("lava-") {
        args.remove(0);
        invoked
    } else if args.len() < 2 || args[1] == "--help" || args[1] == "-h" {
        print_help();
        return ExitCode::from(if args.len() < 2 { 2 } else { 0 });
    } else if args[1] == "--version" {
        println!("node-agent {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    } else {
        args.drain(..2).nth(1).unwrap_or_default()
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("{command}: cannot start: {err}");
            return ExitCode::from(3);
        }
    };
    let outcome = runtime.block_on(async {
        match command.as_str() {
            "install" => run::install(&args),
            "run" => run::run(&args).await,
            name if name.starts_with("lava-") => commands::run(name, &args).await.map(|()| 0),
            name => commands::run(&format!("lava-{name}"), &args)
                .await
                .map(|()| 0),
        }
    });
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("{command}: {}", failure.message());
            ExitCode::from(failure.exit_code())
        }
    }
}

fn print_help() {
    println!(
        "node-agent: the MultiNode lava-* commands\n\n\
         usage: lava-<command> [args]          (through a link made by 'install')\n\
         \x20      node-agent <command> [args]   (e.g. node-agent sync ready)\n\
         \x20      node-agent install DIR        (make the lava-* links in DIR)\n\
         \x20      node-agent run -- COMMAND...  (run COMMAND as this node, attached to the coordinator)\n\n\
         commands: {}",
        commands::COMMANDS.join(", ")
    );
}
