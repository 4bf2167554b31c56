//! The `lava-*` commands, with LAVA's arguments, output and cache files.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::SystemTime;

use coordinator_client::network;
use proto::multinode::{NETWORK_MESSAGE, VM_START_MESSAGE, VM_STOP_MESSAGE};
use proto::signal::{self, Outcome, Signal, TestCase};

use crate::transport::{Entries, Failure, Transport};
use crate::{cache, env, helpers, netinfo};

/// Every command this binary answers to, as installed links.
pub const COMMANDS: &[&str] = &[
    "lava-self",
    "lava-role",
    "lava-group",
    "lava-send",
    "lava-wait",
    "lava-wait-all",
    "lava-sync",
    "lava-network",
    "lava-start-vms",
    "lava-wait-for-vms",
    "lava-test-case",
    "lava-test-set",
    "lava-test-raise",
    "lava-test-reference",
    "lava-test-run-attach",
    "lava-test-case-attach",
    "lava-echo-ipv4",
    "lava-target-ip",
    "lava-install-packages",
    "lava-background-process-start",
    "lava-background-process-stop",
];

fn usage(text: &str) -> Failure {
    Failure::Usage(format!("usage: {text}"))
}

fn println(line: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| Failure::Infrastructure(format!("cannot write output: {e}")))
}

/// Runs one command.
pub async fn run(command: &str, args: &[String]) -> Result<(), Failure> {
    let timeout = env::timeout().map_err(Failure::Usage)?;
    let deadline = SystemTime::now() + timeout;
    match command {
        "lava-self" => {
            let id = env::var(env::NODE_ID)
                .ok_or_else(|| Failure::Infrastructure(format!("{} is not set", env::NODE_ID)))?;
            println(&id)
        }
        "lava-role" => match args {
            [] => match env::var(env::NODE_ROLE) {
                Some(role) => println(&role),
                None => {
                    let me = env::var(env::NODE_ID).unwrap_or_default();
                    let group = Transport::open(timeout).await?.group().await?;
                    let role = group.into_iter().find(|(n, _)| *n == me).map(|(_, r)| r);
                    println(&role.ok_or_else(|| {
                        Failure::Infrastructure("this node is not in its group".into())
                    })?)
                }
            },
            [list] if list == "list" => {
                let group = Transport::open(timeout).await?.group().await?;
                let mut seen = Vec::new();
                for (_, role) in group {
                    if !seen.contains(&role) {
                        println(&role)?;
                        seen.push(role);
                    }
                }
                Ok(())
            }
            _ => Err(usage("lava-role [list]")),
        },
        "lava-group" => {
            let group = Transport::open(timeout).await?.group().await?;
            match args {
                [] => group
                    .iter()
                    .try_for_each(|(node, role)| println(&format!("{node}\t{role}"))),
                [wanted] => {
                    let members: Vec<&String> = group
                        .iter()
                        .filter(|(_, r)| r == wanted)
                        .map(|(n, _)| n)
                        .collect();
                    if members.is_empty() {
                        return Err(Failure::MultiNode(format!(
                            "no role {wanted:?} in this group"
                        )));
                    }
                    members.into_iter().try_for_each(|n| println(n))
                }
                _ => Err(usage("lava-group [role]")),
            }
        }
        "lava-send" => {
            let (id, pairs) = args
                .split_first()
                .ok_or_else(|| usage("lava-send <message-id> [key=value ...]"))?;
            check_id(id)?;
            let data = pairs
                .iter()
                .map(|p| {
                    p.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .ok_or_else(|| {
                            usage(&format!("lava-send {id} key=value ...: {p:?} has no '='"))
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mut transport = Transport::open(timeout).await?;
            recorded("send", id, transport.send(id, data).await)
        }
        "lava-wait" => {
            let [id] = args else {
                return Err(usage("lava-wait <message-id>"));
            };
            check_id(id)?;
            let mut transport = Transport::open(timeout).await?;
            let entries = recorded("wait", id, transport.wait(id, deadline).await)?;
            cache::write(&env::cache_file(), &entries)
        }
        "lava-wait-all" => {
            let (id, role) = match args {
                [id] => (id, None),
                [id, role] => (id, Some(role.as_str())),
                _ => return Err(usage("lava-wait-all <message-id> [role]")),
            };
            check_id(id)?;
            let mut transport = Transport::open(timeout).await?;
            let entries = recorded("wait-all", id, transport.wait_all(id, role, deadline).await)?;
            cache::write(&env::cache_file(), &entries)
        }
        "lava-sync" => {
            let [id] = args else {
                return Err(usage("lava-sync <message-id>"));
            };
            check_id(id)?;
            let mut transport = Transport::open(timeout).await?;
            recorded("sync", id, transport.sync(id, deadline).await)
        }
        "lava-start-vms" => {
            if !args.is_empty() {
                return Err(usage("lava-start-vms"));
            }
            let ip = env::var(env::VM_GROUP_HOST_IP).ok_or_else(|| {
                Failure::Infrastructure(format!(
                    "{} is not set: is this the VM group's host?",
                    env::VM_GROUP_HOST_IP
                ))
            })?;
            let mut transport = Transport::open(timeout).await?;
            recorded(
                "start-vms",
                VM_START_MESSAGE,
                transport.start_vms(&ip).await,
            )
        }
        "lava-wait-for-vms" => {
            if !args.is_empty() {
                return Err(usage("lava-wait-for-vms"));
            }
            let mut transport = Transport::open(timeout).await?;
            recorded(
                "wait-for-vms",
                VM_STOP_MESSAGE,
                transport.wait_for_vms(deadline).await,
            )
        }
        "lava-network" => network(args, timeout, deadline).await,
        "lava-test-case" => test_case(args).await,
        "lava-test-set" => match args {
            [verb, name] if verb == "start" => emit(&Signal::TestSetStart {
                name: word(name)?.to_string(),
            }),
            [verb] | [verb, _] if verb == "stop" => emit(&Signal::TestSetStop),
            _ => Err(usage("lava-test-set start <name> | lava-test-set stop")),
        },
        "lava-test-raise" => {
            if args.is_empty() {
                return Err(usage("lava-test-raise <message>"));
            }
            emit(&Signal::TestRaise {
                message: args.join(" "),
            })?;
            Err(Failure::MultiNode(format!(
                "test raised: {}",
                args.join(" ")
            )))
        }
        "lava-test-reference" => test_reference(args),
        "lava-test-run-attach" => match args {
            [file] => helpers::attach(None, file, None),
            [file, mimetype] => helpers::attach(None, file, Some(word(mimetype)?)),
            _ => Err(usage("lava-test-run-attach <file> [mime-type]")),
        },
        "lava-test-case-attach" => match args {
            [case, file] => helpers::attach(Some(word(case)?), file, None),
            [case, file, mimetype] => {
                helpers::attach(Some(word(case)?), file, Some(word(mimetype)?))
            }
            _ => Err(usage("lava-test-case-attach <name> <file> [mime-type]")),
        },
        "lava-echo-ipv4" => match args {
            [iface] => println(&helpers::ipv4_of(iface)?),
            _ => Err(usage("lava-echo-ipv4 <iface>")),
        },
        "lava-target-ip" => match args {
            [] => println(&helpers::target_ip()?),
            _ => Err(usage("lava-target-ip")),
        },
        "lava-install-packages" => {
            if args.is_empty() {
                return Err(usage("lava-install-packages <package ...>"));
            }
            helpers::install_packages(args).await
        }
        "lava-background-process-start" => match args {
            [name, flag, command @ ..] if flag == "--cmd" && !command.is_empty() => {
                helpers::background_start(word(name)?, &command.join(" "))
            }
            _ => Err(usage(
                "lava-background-process-start <name> --cmd <command ...>",
            )),
        },
        "lava-background-process-stop" => {
            const USAGE: &str =
                "lava-background-process-stop <name> [--attach <file> <mime-type>] ...";
            let (name, rest) = args.split_first().ok_or_else(|| usage(USAGE))?;
            let name = word(name)?;
            let attachments = rest
                .chunks(3)
                .map(|chunk| match chunk {
                    [flag, file, mimetype] if flag == "--attach" => Ok((file, word(mimetype)?)),
                    _ => Err(usage(USAGE)),
                })
                .collect::<Result<Vec<_>, _>>()?;
            helpers::background_stop(name)?;
            attachments
                .into_iter()
                .try_for_each(|(file, mimetype)| helpers::attach(None, file, Some(mimetype)))
        }
        other => Err(Failure::Usage(format!(
            "unknown command {other:?}; commands: {}",
            COMMANDS.join(", ")
        ))),
    }
}

/// Message ids as LAVA takes them: non-empty, no '='.
fn check_id(id: &str) -> Result<(), Failure> {
    if id.is_empty() || id.contains('=') || id.chars().any(char::is_whitespace) {
        return Err(Failure::Usage(format!(
            "invalid message id {id:?}: it may not be empty or contain '=' or spaces"
        )));
    }
    Ok(())
}

/// Prints a signal for the dispatcher to read.
fn emit(signal: &Signal) -> Result<(), Failure> {
    println(&signal.to_string())
}

/// Test case names and set names may not contain white space (LAVA's rule).
fn word(name: &str) -> Result<&str, Failure> {
    if !signal::is_word(name) {
        return Err(Failure::Usage(format!(
            "{name:?} may not be empty or contain spaces, '<' or '>'"
        )));
    }
    Ok(name)
}

/// Records a MultiNode call as a test case `multinode-<api>-<id>`, as LAVA does, and
/// passes its outcome on.
fn recorded<T>(api: &str, id: &str, outcome: Result<T, Failure>) -> Result<T, Failure> {
    emit(&Signal::TestCase(TestCase::new(
        format!("multinode-{api}-{id}"),
        Outcome::of(outcome.is_ok()),
    )))?;
    outcome
}

async fn test_case(args: &[String]) -> Result<(), Failure> {
    const USAGE: &str = "lava-test-case <name> --result pass|fail|skip|unknown [--measurement M] [--units U] | lava-test-case <name> --shell <command ...>";
    let (name, rest) = args.split_first().ok_or_else(|| usage(USAGE))?;
    let name = word(name)?;
    let (result, measurement, units) = match rest.first().map(String::as_str) {
        Some("--shell") => {
            if rest.len() < 2 {
                return Err(usage(USAGE));
            }
            // The command's output stands between these, as LAVA's lava-test-case has it.
            emit(&Signal::StartTc {
                id: name.to_string(),
            })?;
            let status = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(rest[1..].join(" "))
                .status()
                .await
                .map_err(|e| Failure::Infrastructure(format!("cannot run sh: {e}")))?;
            emit(&Signal::EndTc {
                id: name.to_string(),
            })?;
            (Outcome::of(status.success()), None, None)
        }
        Some(_) => {
            let options = flags(rest, &["--result", "--measurement", "--units"], USAGE)?;
            let measurement = options.get("--measurement").map(|m| word(m)).transpose()?;
            let units = options.get("--units").map(|u| word(u)).transpose()?;
            (
                outcome(&options, USAGE)?,
                measurement.map(str::to_string),
                units.map(str::to_string),
            )
        }
        _ => return Err(usage(USAGE)),
    };
    emit(&Signal::TestCase(TestCase {
        id: name.to_string(),
        result,
        measurement,
        units,
    }))
}

/// LAVA's `--flag value` pairs, in any order, each of `allowed`.
fn flags<'a>(
    args: &'a [String],
    allowed: &[&str],
    usage_text: &str,
) -> Result<BTreeMap<&'a str, &'a str>, Failure> {
    let mut options = BTreeMap::new();
    for pair in args.chunks(2) {
        match pair {
            [flag, value] if allowed.contains(&flag.as_str()) => {
                options.insert(flag.as_str(), value.as_str());
            }
            _ => return Err(usage(usage_text)),
        }
    }
    Ok(options)
}

/// The `--result` of `options`: one of LAVA's four words.
fn outcome(options: &BTreeMap<&str, &str>, usage_text: &str) -> Result<Outcome, Failure> {
    options
        .get("--result")
        .copied()
        .unwrap_or_default()
        .parse()
        .map_err(|_| usage(usage_text))
}

/// `lava-test-reference NAME --result R --reference URL` (flags in any order).
fn test_reference(args: &[String]) -> Result<(), Failure> {
    const USAGE: &str =
        "lava-test-reference <name> --result pass|fail|skip|unknown --reference URL";
    let (name, rest) = args.split_first().ok_or_else(|| usage(USAGE))?;
    let name = word(name)?;
    let options = flags(rest, &["--result", "--reference"], USAGE)?;
    let result = outcome(&options, USAGE)?;
    let reference = options.get("--reference").ok_or_else(|| usage(USAGE))?;
    emit(&Signal::TestReference {
        id: name.to_string(),
        result,
        reference: word(reference)?.to_string(),
    })
}

async fn network(
    args: &[String],
    timeout: std::time::Duration,
    deadline: SystemTime,
) -> Result<(), Failure> {
    const USAGE: &str = "lava-network broadcast <iface> | collect <iface> [role] | query <node> <key> | hosts <file> | alias-hosts <file>";
    let (verb, rest) = args.split_first().ok_or_else(|| usage(USAGE))?;
    match (verb.as_str(), rest) {
        ("broadcast", [iface]) => {
            let info = netinfo::gather(iface)?;
            let mut transport = Transport::open(timeout).await?;
            recorded(
                "network-broadcast",
                iface,
                transport.network_broadcast(info).await,
            )
        }
        ("collect", [_iface, role @ ..]) if role.len() <= 1 => {
            let mut transport = Transport::open(timeout).await?;
            let role = role.first().map(String::as_str);
            let entries = recorded(
                "network-collect",
                NETWORK_MESSAGE,
                transport.network_collect(role, deadline).await,
            )?;
            cache::write(&env::network_cache_file(), &entries)
        }
        ("query", [node, key]) => {
            let entries = cache::read(&env::network_cache_file())?;
            let value = lookup(&entries, node, key).ok_or_else(|| {
                Failure::MultiNode(format!("no {key} for {node} in the network cache"))
            })?;
            println(&value)
        }
        ("hosts", [file]) => append_hosts(file, false, timeout).await,
        ("alias-hosts", [file]) => append_hosts(file, true, timeout).await,
        _ => Err(usage(USAGE)),
    }
}

/// A node's value by node id, or by the host name it broadcast.
fn lookup(entries: &Entries, node: &str, key: &str) -> Option<String> {
    let by_hostname = entries
        .iter()
        .find(|(_, k, v)| k == network::HOSTNAME && v == node)
        .map(|(n, _, _)| n.as_str());
    let target = if entries.iter().any(|(n, _, _)| n == node) {
        Some(node)
    } else {
        by_hostname
    }?;
    entries
        .iter()
        .find(|(n, k, _)| n == target && k == key)
        .map(|(_, _, v)| v.clone())
}

/// Appends `ipv4<TAB>hostname` lines (and, for alias-hosts, a role alias such as
/// `client02`) for every node in the network cache.
async fn append_hosts(
    file: &str,
    aliases: bool,
    timeout: std::time::Duration,
) -> Result<(), Failure> {
    let entries = cache::read(&env::network_cache_file())?;
    let group = if aliases {
        Transport::open(timeout).await?.group().await?
    } else {
        Vec::new()
    };
    let mut per_role: BTreeMap<&str, usize> = BTreeMap::new();
    let mut nodes: Vec<&str> = entries.iter().map(|(n, _, _)| n.as_str()).collect();
    nodes.dedup();
    let mut text = String::new();
    for node in nodes {
        let (Some(ip), Some(host)) = (
            lookup(&entries, node, network::IPV4),
            lookup(&entries, node, network::HOSTNAME),
        ) else {
            continue;
        };
        text.push_str(&format!("{ip}\t{host}"));
        if let Some((_, role)) = group.iter().find(|(n, _)| n == node) {
            let index = per_role.entry(role).or_default();
            *index += 1;
            text.push_str(&format!("\t{role}{:02}", index));
        }
        text.push('\n');
    }
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .map_err(|e| Failure::Usage(format!("cannot open {file}: {e}")))?;
    out.write_all(text.as_bytes())
        .map_err(|e| Failure::Infrastructure(format!("cannot write {file}: {e}")))
}
