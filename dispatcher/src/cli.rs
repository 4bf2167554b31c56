//! Command-line parsing and the subcommands' output.

use std::path::{Path, PathBuf};

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use hostctl::fetch::{FetchLimits, FetchPolicy};
use job_schemas::{Limits, Report, Topology};
use lab::{Lab, LabReport};
use runner::validation::{self, JobPolicy};

use crate::out::{errln, errprint};
use crate::remote::{self, Simple};
use crate::{exit, out};
use runner::formats::ResultsFormat;

#[derive(Debug, Parser)]
#[command(
    name = "dispatcher",
    version,
    about = "LAVA-style MultiNode / VM-group test dispatcher"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a job file and print every problem, like a compiler.
    Validate(ValidateArgs),
    /// Run one job here and now, without a daemon: boot the host, launch the VMs, run
    /// the test shells, print the results.
    Run(RunArgs),
    /// Device types and devices.
    Devices {
        #[command(subcommand)]
        command: DevicesCommand,
    },
    /// The workers sharing a daemon's database.
    Workers {
        #[command(subcommand)]
        command: WorkersCommand,
    },
    /// A daemon's jobs.
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// Run the daemon: HTTP API, queue, scheduler, jobs, embedded coordinator.
    Serve {
        /// The daemon's configuration (TOML).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Check the configuration and the lab files, print what was found, and exit
        /// (1: the daemon would refuse to start) without starting.
        #[arg(long)]
        check: bool,
    },
    /// Submit a job to a daemon.
    Submit {
        job: PathBuf,
        /// Print the job's log as it runs (with progress on a terminal), then its
        /// results; the exit status is the job's (0 passed, 1 a case failed, 3
        /// incomplete).
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// A job's state, timings and nodes; a finished job's exit status is its result.
    Status {
        id: u64,
        #[command(flatten)]
        format: FormatArg,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Wait for a job to end (progress on a terminal), print its results; the exit
    /// status is the job's (0 passed, 1 a case failed, 3 incomplete).
    Wait {
        id: u64,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// A job's log; once the job has ended, the exit status is its result.
    Logs {
        id: u64,
        /// Keep printing lines until the job ends (with progress on a terminal).
        #[arg(long)]
        follow: bool,
        /// Only this node's lines (`host`, `server`, `client-2` ...).
        #[arg(long, value_name = "NODE")]
        node: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Cancel a job (a running one is stopped and cleaned up).
    Cancel {
        id: u64,
        #[command(flatten)]
        format: FormatArg,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Submit a job again as it was written; the new job names the old one.
    Resubmit {
        id: u64,
        #[command(flatten)]
        format: FormatArg,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// A job's results: one line per test case and the counts, or JSON, JUnit XML or
    /// TAP.
    Results {
        id: u64,
        #[arg(long, value_enum, default_value_t = ResultsArg::Text)]
        format: ResultsArg,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Print a shell completion script: `dispatcher completions bash >
    /// /usr/share/bash-completion/completions/dispatcher`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), or write one page per subcommand into DIR.
    Manpage {
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// `--format text|json` of the commands that print a daemon's answer.
#[derive(Debug, clap::Args)]
struct FormatArg {
    /// `text` for people (tables, colour on a terminal), `json` for scripts.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

impl FormatArg {
    fn get(&self) -> remote::Format {
        match self.format {
            Format::Text => remote::Format::Text,
            Format::Json => remote::Format::Json,
        }
    }
}

#[derive(Debug, clap::Args)]
struct ServerArgs {
    /// The daemon's URL.
    #[arg(
        long,
        env = "LAVA_DISPATCHER_URL",
        default_value = "http://127.0.0.1:8079"
    )]
    server: String,
    /// An API token (dispatcher token create).
    #[arg(long, env = "LAVA_DISPATCHER_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl From<ServerArgs> for crate::remote::Server {
    fn from(args: ServerArgs) -> Self {
        Self {
            url: args.server,
            token: args.token,
        }
    }
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Make a token; it is printed once, the daemon keeps only its hash.
    Create {
        name: String,
        /// The daemon's configuration (for its database).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The token may only read (jobs, logs, results, devices): no submit, cancel or
        /// health changes.
        #[arg(long)]
        read_only: bool,
    },
}

#[derive(Debug, clap::Args)]
struct ValidateArgs {
    /// The job (LAVA v1 JSON).
    job: PathBuf,
    /// Device types to check against (default: the ones built into this binary).
    #[arg(long, value_name = "DIR")]
    device_types: Option<PathBuf>,
    /// Directory file:// URLs may point into; repeat for several (default: /).
    #[arg(long = "file-root", value_name = "DIR")]
    file_roots: Vec<PathBuf>,
    /// Largest count for one role.
    #[arg(long, default_value_t = Limits::default().max_count)]
    max_count: u64,
    /// Largest number of nodes in one job.
    #[arg(long, default_value_t = Limits::default().max_group_size)]
    max_group_size: u64,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The job (LAVA v1 JSON).
    job: PathBuf,
    /// Device files (*.toml) of the lab.
    #[arg(long, value_name = "DIR")]
    devices: PathBuf,
    /// Device types (default: the ones built into this binary).
    #[arg(long, value_name = "DIR")]
    device_types: Option<PathBuf>,
    /// The device to run on (default: the first free one that fits).
    #[arg(long, value_name = "NAME")]
    device: Option<String>,
    /// The dispatcher's state: jobs/, images/, known_hosts.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/lava-dispatcher")]
    state_dir: PathBuf,
    /// The lab's SSH private key, for devices whose file names none.
    #[arg(long, value_name = "FILE")]
    lab_key: Option<PathBuf>,
    /// The static node agent to install on hosts (default: `node-agent-static` next to
    /// this binary, as scripts/build-node-agent-static.sh leaves it).
    #[arg(long, value_name = "FILE")]
    node_agent: Option<PathBuf>,
    /// The dispatcher's directory on host devices.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/lava-dispatcher")]
    host_dir: String,
    /// How to print the results: the summary, or JSON, JUnit XML or TAP.
    #[arg(long, value_enum, default_value_t = ResultsArg::Text)]
    format: ResultsArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ResultsArg {
    Text,
    Json,
    Junit,
    Tap,
}

impl ResultsArg {
    /// `None`: the terminal summary.
    fn format(self) -> Option<ResultsFormat> {
        match self {
            Self::Text => None,
            Self::Json => Some(ResultsFormat::Json),
            Self::Junit => Some(ResultsFormat::Junit),
            Self::Tap => Some(ResultsFormat::Tap),
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum JobsCommand {
    /// Jobs, newest first, a page at a time, as a table.
    List {
        #[arg(long, value_parser = ["submitted", "scheduled", "running", "canceling", "finished"])]
        state: Option<String>,
        /// A finished job's health.
        #[arg(long, value_parser = ["complete", "incomplete", "canceled"])]
        health: Option<String>,
        /// Jobs with a node of this device type.
        #[arg(long, value_name = "TYPE")]
        device_type: Option<String>,
        /// Text in the job's name, or its id.
        #[arg(long, value_name = "TEXT")]
        search: Option<String>,
        /// Jobs on the page (1 to 1000).
        #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
        /// Jobs skipped before the page.
        #[arg(long, default_value_t = 0)]
        offset: u64,
        #[command(flatten)]
        format: FormatArg,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// A job as it was submitted (its JSON, byte for byte; callback tokens hidden).
    Definition {
        id: u64,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Debug, Subcommand)]
enum WorkersCommand {
    /// Each worker: alive or lost, version, its last beat, its devices, its API.
    List {
        #[command(flatten)]
        format: FormatArg,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Debug, Subcommand)]
enum DevicesCommand {
    /// Check device type files in DIR and device files in DIR/devices (or --devices).
    Check {
        /// Directory of device type files (*.toml).
        dir: PathBuf,
        /// Directory of device files (default: DIR/devices if it exists).
        #[arg(long, value_name = "DIR")]
        devices: Option<PathBuf>,
    },
    /// The devices of a daemon, with their state and health.
    List {
        #[command(flatten)]
        format: FormatArg,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Makes a daemon read its lab files again (as SIGHUP does): new and fixed devices
    /// join, a device whose file has errors goes offline naming them, running jobs keep
    /// their devices.
    Reload {
        #[command(flatten)]
        format: FormatArg,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// One device: state, health, its type's health check, and its health history.
    Show {
        hostname: String,
        #[command(flatten)]
        format: FormatArg,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Sets a device's health as an admin: `good`, `unknown` (its health check runs
    /// before its next job), `bad`, `maintenance` or `retired`.
    Health {
        hostname: String,
        #[arg(value_parser = ["good", "unknown", "bad", "maintenance", "retired"])]
        health: String,
        /// Why, kept in the device's health history.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        format: FormatArg,
        #[command(flatten)]
        server: ServerArgs,
    },
}

pub fn run(cli: Cli) -> u8 {
    match cli.command {
        Command::Validate(args) => validate(&args),
        Command::Run(args) => crate::run::run(&args.into()),
        Command::Devices {
            command: DevicesCommand::Check { dir, devices },
        } => devices_check(&dir, devices.as_deref()),
        Command::Devices {
            command: DevicesCommand::List { format, server },
        } => remote::simple(&server.into(), Simple::Devices, format.get()),
        Command::Workers {
            command: WorkersCommand::List { format, server },
        } => remote::simple(&server.into(), Simple::Workers, format.get()),
        Command::Devices {
            command:
                DevicesCommand::Show {
                    hostname,
                    format,
                    server,
                },
        } => remote::simple(&server.into(), Simple::Device(hostname), format.get()),
        Command::Devices {
            command: DevicesCommand::Reload { format, server },
        } => remote::simple(&server.into(), Simple::Reload, format.get()),
        Command::Devices {
            command:
                DevicesCommand::Health {
                    hostname,
                    health,
                    reason,
                    format,
                    server,
                },
        } => remote::simple(
            &server.into(),
            Simple::SetHealth {
                device: hostname,
                health,
                reason,
            },
            format.get(),
        ),
        Command::Jobs {
            command:
                JobsCommand::List {
                    state,
                    health,
                    device_type,
                    search,
                    limit,
                    offset,
                    format,
                    server,
                },
        } => {
            let mut query = vec![("limit", limit.to_string()), ("offset", offset.to_string())];
            let named = [
                ("state", state),
                ("health", health),
                ("device_type", device_type),
                ("q", search),
            ];
            query.extend(named.into_iter().filter_map(|(k, v)| Some((k, v?))));
            remote::jobs(&server.into(), &query, format.get())
        }
        Command::Jobs {
            command: JobsCommand::Definition { id, server },
        } => remote::definition(&server.into(), id),
        Command::Serve {
            config,
            check: false,
        } => crate::serve::serve(&config),
        Command::Serve {
            config,
            check: true,
        } => crate::serve::check(&config),
        Command::Submit {
            job,
            follow,
            server,
        } => remote::submit(&server.into(), &job, follow),
        Command::Status { id, format, server } => remote::status(&server.into(), id, format.get()),
        Command::Wait { id, server } => remote::wait(&server.into(), id),
        Command::Results { id, format, server } => {
            remote::results(&server.into(), id, format.format())
        }
        Command::Cancel { id, format, server } => {
            remote::simple(&server.into(), Simple::Cancel(id), format.get())
        }
        Command::Resubmit { id, format, server } => {
            remote::simple(&server.into(), Simple::Resubmit(id), format.get())
        }
        Command::Logs {
            id,
            follow,
            node,
            server,
        } => remote::logs(&server.into(), id, follow, node.as_deref()),
        Command::Token {
            command:
                TokenCommand::Create {
                    name,
                    config,
                    read_only,
                },
        } => crate::serve::token_create(&config, &name, read_only),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "dispatcher", &mut script);
            out::text(String::from_utf8_lossy(&script));
            exit::OK
        }
        Command::Manpage { dir } => manpage(dir.as_deref()),
    }
}

/// The manual from the clap definitions: the main page on stdout, or every page
/// (`dispatcher.1`, `dispatcher-submit.1`, ...) written into `dir`.
fn manpage(dir: Option<&Path>) -> u8 {
    let command = Cli::command();
    let written = match dir {
        Some(dir) => std::fs::create_dir_all(dir)
            .and_then(|()| clap_mangen::generate_to(command, dir))
            .map_err(|e| format!("{}: {e}", dir.display())),
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(command)
                .render(&mut page)
                .map(|()| out::text(String::from_utf8_lossy(&page)))
                .map_err(|e| e.to_string())
        }
    };
    match written {
        Ok(()) => exit::OK,
        Err(err) => {
            errln!("error: cannot write the manual: {err}");
            exit::UNREADABLE
        }
    }
}

fn validate(args: &ValidateArgs) -> u8 {
    let source = args.job.display().to_string();
    let text = match std::fs::read(&args.job) {
        Err(err) => {
            errln!("error: cannot read {source}: {err}");
            return exit::UNREADABLE;
        }
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(err) => {
                errln!("error: {source} is not UTF-8 text: {err}");
                return exit::UNREADABLE;
            }
        },
    };
    let lab = match &args.device_types {
        Some(dir) => Lab::load(dir, None).map(|(lab, _warnings)| lab),
        None => Lab::builtin(),
    };
    let lab = match lab {
        Ok(lab) => lab,
        Err(report) => {
            errprint!("{}", report.render());
            errln!(
                "error: the device types are invalid; fix them first (dispatcher devices check)"
            );
            return exit::UNREADABLE;
        }
    };
    let policy = JobPolicy {
        limits: Limits {
            max_count: args.max_count,
            max_group_size: args.max_group_size,
        },
        fetch: if args.file_roots.is_empty() {
            JobPolicy::default().fetch
        } else {
            std::sync::Arc::new(FetchPolicy::restricted(
                &args.file_roots,
                &[],
                Vec::new(),
                FetchLimits::default(),
            ))
        },
        max_job_timeout_secs: None,
    };
    let outcome = validation::validate_job(&text, &lab, &policy);
    match args.format {
        Format::Json => print_json(&outcome),
        Format::Text => match &outcome {
            Ok(validated) => {
                let warnings = validated.warnings_report();
                if !validated.warnings.is_empty() {
                    errprint!("{}", warnings.render(&source));
                }
                out::line(format!("{source}: valid ({})", describe(&validated.job)));
            }
            Err(report) => errprint!("{}", report.render(&source)),
        },
    }
    if outcome.is_ok() {
        exit::OK
    } else {
        exit::PROBLEMS
    }
}

impl From<RunArgs> for crate::run::RunRequest {
    fn from(args: RunArgs) -> Self {
        Self {
            job: args.job,
            devices: args.devices,
            device_types: args.device_types,
            device: args.device,
            state_dir: args.state_dir.clone(),
            lab_key: args
                .lab_key
                .unwrap_or_else(|| args.state_dir.join("keys/lab_ed25519")),
            node_agent: args.node_agent,
            host_dir: args.host_dir,
            format: args.format.format(),
        }
    }
}

fn print_json(outcome: &Result<job_schemas::Validated, Report>) {
    let value = match outcome {
        Ok(validated) => serde_json::json!({
            "valid": true,
            "diagnostics": validated.warnings,
            "job": validated.job,
        }),
        Err(report) => serde_json::json!({
            "valid": false,
            "diagnostics": report.diagnostics(),
        }),
    };
    out::line(format!("{value:#}"));
}

/// "vm_group: 3 nodes (host, server, client)"
fn describe(job: &job_schemas::Job) -> String {
    let kind = match job.topology {
        Topology::Single { .. } => "single device",
        Topology::DeviceGroup { .. } => "device_group",
        Topology::VmGroup(_) => "vm_group",
    };
    let roles: Vec<String> = job
        .roles()
        .iter()
        .map(|r| {
            if r.count == 1 {
                r.name.clone()
            } else {
                format!("{} x{}", r.name, r.count)
            }
        })
        .collect();
    let nodes = job.node_count();
    format!(
        "{kind}, {nodes} node{} ({}), {} action{}",
        if nodes == 1 { "" } else { "s" },
        roles.join(", "),
        job.actions.len(),
        if job.actions.len() == 1 { "" } else { "s" }
    )
}

fn devices_check(dir: &Path, devices: Option<&Path>) -> u8 {
    let default_devices = dir.join("devices");
    let devices = devices.or_else(|| {
        default_devices
            .is_dir()
            .then_some(default_devices.as_path())
    });
    match Lab::load(dir, devices) {
        Ok((lab, warnings)) => {
            print_warnings(&warnings);
            out::line(format!(
                "ok: {} device type{} ({}), {} device{} ({})",
                lab.device_types.len(),
                if lab.device_types.len() == 1 { "" } else { "s" },
                lab.device_types
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
                lab.devices.len(),
                if lab.devices.len() == 1 { "" } else { "s" },
                lab.devices.keys().cloned().collect::<Vec<_>>().join(", "),
            ));
            exit::OK
        }
        Err(report) => {
            errprint!("{}", report.render());
            errln!(
                "{} error(s): the lab configuration is not valid",
                report.error_count()
            );
            exit::PROBLEMS
        }
    }
}

fn print_warnings(report: &LabReport) {
    if !report.files.is_empty() {
        errprint!("{}", report.render());
    }
}
