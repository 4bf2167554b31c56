//! Checks a schema cannot express: where the job runs, roles and their references,
//! device types the lab knows, limits, URLs, regular expressions and LAVA's reserved keys.
//!
//! These run even when the schema found problems, so a job's every mistake is reported
//! at once; each check therefore reads the JSON defensively and skips what has the wrong
//! shape (the schema already reported that).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::context::{DeviceTypeClass, ValidationContext};
use crate::diagnostic::{Diagnostic, MAX_DIAGNOSTICS};
use crate::{pointer, suggest, urls};

/// Top-level keys LAVA's scheduler writes into sub-jobs itself and refuses from users.
const RESERVED_KEYS: [&str; 4] = ["target_group", "group_size", "sub_id", "role"];

/// The top-level keys the dispatcher reads; any other is accepted with a warning, as
/// LAVA v1 accepted (and ignored) keys it did not know.
pub(crate) const KNOWN_KEYS: [&str; 15] = [
    "job_name",
    "notify",
    "notify_on_incomplete",
    "callbacks",
    "timeout",
    "logging_level",
    "priority",
    "tags",
    "device_type",
    "target",
    "health_check",
    "metadata",
    "device_group",
    "vm_group",
    "actions",
];

/// Commands LAVA v1 used to send results to its dashboard. The dispatcher keeps results
/// itself, so these are accepted and ignored whole, parameters included.
pub(crate) fn is_result_submission(command: &str) -> bool {
    matches!(command, "submit_results" | "submit_results_on_host")
}

/// The role a `vm_group` host plays when the job names none.
pub(crate) const DEFAULT_HOST_ROLE: &str = "host";

/// The most VMs one `vm_group` may have, counting each VM's `count`. The VMs of a group
/// share one /24 network on which each gets its own address, and the dispatcher hands
/// out at most 250 of them (see `hostctl::launch::GroupLan`).
pub const MAX_VMS_PER_GROUP: usize = 250;

/// The longest timeout, job or action, in seconds: 365 days. Far more than a test run
/// needs, and small enough that a deadline computed from it (now + timeout) can never
/// overflow, which a timeout near `u64::MAX` would do.
pub const MAX_TIMEOUT_SECS: u64 = 365 * 24 * 60 * 60;

/// The job timeout of a job that gives none (LAVA v1 required one; its examples do not
/// always have it): an hour, which a warning names.
pub const DEFAULT_JOB_TIMEOUT_SECS: u64 = 3600;

pub(crate) fn is_reserved_key(key: &str) -> bool {
    RESERVED_KEYS.contains(&key)
}

pub(crate) fn check(job: &Value, ctx: &ValidationContext) -> Vec<Diagnostic> {
    let Some(top) = job.as_object() else {
        return Vec::new(); // The schema reports "expected object".
    };
    let mut out = Vec::new();
    for key in RESERVED_KEYS.iter().filter(|k| top.contains_key(**k)) {
        out.push(
            Diagnostic::error(
                pointer::push("", key),
                format!("Reserved parameters found in job data: \"{key}\""),
            )
            .hint(format!(
                "\"{key}\" is set by the dispatcher for each node of a group; remove it"
            )),
        );
    }
    check_unknown_keys(top, &mut out);
    check_topology(top, &mut out);
    if top.get("health_check").and_then(Value::as_bool) == Some(true) {
        // LAVA v1's scheduler set it on the health checks it ran; a submitted job is
        // an ordinary one here, whatever it says.
        out.push(
            Diagnostic::warning("/health_check", "a submitted job runs as an ordinary job").hint(
                "a device's health is decided by its device type's [health_check] job, \
                     which the dispatcher runs itself",
            ),
        );
    }
    check_timeouts(job, &mut out);
    if let Some(priority) = top.get("priority") {
        // Named priorities are strings; the schema bounds numbers to 0..=100.
        integer_at("/priority", priority, "priority", 0, 100, &mut out);
    }
    let roles = collect_roles(job);
    check_roles(&roles, &mut out);
    check_node_ids(&roles, &mut out);
    check_counts(job, ctx, &mut out);
    check_device_types(job, ctx, &mut out);
    check_actions(job, &roles, ctx, &mut out);
    check_vms(job, ctx, &mut out);
    out
}

/// LAVA v1 accepted any top-level key (`health-check`, `image_type`...) and ignored
/// those it did not use: so does the dispatcher, saying so, with a hint when the key is
/// a likely typo of one it reads.
fn check_unknown_keys(top: &serde_json::Map<String, Value>, out: &mut Vec<Diagnostic>) {
    for key in top.keys() {
        if KNOWN_KEYS.contains(&key.as_str()) || is_reserved_key(key) {
            continue;
        }
        let diagnostic = Diagnostic::warning(
            pointer::push("", key),
            format!("unknown key \"{key}\" is ignored"),
        );
        out.push(match suggest::did_you_mean(key, KNOWN_KEYS) {
            Some(hint) => diagnostic.hint(hint),
            None => {
                diagnostic.hint("LAVA v1 ignored keys it did not know; so does this dispatcher")
            }
        });
    }
}

fn check_topology(top: &serde_json::Map<String, Value>, out: &mut Vec<Diagnostic>) {
    let present: Vec<&str> = ["device_type", "device_group", "vm_group"]
        .into_iter()
        .filter(|k| top.contains_key(*k))
        .collect();
    match present.as_slice() {
        // A target alone names the device, whose type the lab knows.
        [] if top.contains_key("target") => {}
        [] => {
            let health_check = ["health-check", "health_check"]
                .iter()
                .any(|k| top.get(*k).and_then(Value::as_bool) == Some(true));
            out.push(
                Diagnostic::error("", "the job does not say where to run")
                    .expected("exactly one of device_type (or target), device_group or vm_group")
                    .found("none of them")
                    .maybe_hint(
                        health_check.then_some(
                            "a LAVA health check got its device from the device type it was \
                         attached to; here a job names it: add \"device_type\" or \"target\""
                                .to_string(),
                        ),
                    ),
            );
        }
        [_] => {}
        [first, rest @ ..] => {
            for other in rest {
                out.push(
                    Diagnostic::error(
                        pointer::push("", other),
                        format!("\"{other}\" cannot be combined with \"{first}\""),
                    )
                    .expected("exactly one of device_type, device_group or vm_group")
                    .found(present.join(", ")),
                );
            }
        }
    }
    if top.contains_key("target")
        && (top.contains_key("device_group") || top.contains_key("vm_group"))
    {
        out.push(
            Diagnostic::error(
                "/target",
                "\"target\" names one device of a single-device job",
            )
            .hint("in a device_group or vm_group job, select devices by tags instead"),
        );
    }
    if let Some(Value::Array(group)) = top.get("device_group") {
        // Only when every count is readable: a missing one is reported by the schema.
        let counts: Option<Vec<u64>> = group
            .iter()
            .map(|r| r.get("count").and_then(Value::as_u64))
            .collect();
        if counts.is_some_and(|c| c.iter().sum::<u64>() == 1) {
            out.push(
                Diagnostic::error(
                    "/device_group",
                    "Only one device requested in a MultiNode job submission.",
                )
                .expected("two or more devices in all")
                .found("1")
                .hint("use device_type for a single-device job"),
            );
        }
    }
}

/// Where a role the job defines is defined.
pub(crate) struct RoleDef {
    pub pointer: String,
    /// Its device type, when the job gives one as a string.
    pub device_type: Option<String>,
    /// Its `count` when that is a positive integer (else the count check reports it).
    pub count: u64,
}

/// Roles in definition order (a role defined twice keeps its first definition).
pub(crate) struct Roles {
    pub all: Vec<(String, RoleDef)>,
    /// Index into `all` of each name's first definition: every action looks its role
    /// up, and a scan of `all` each time would make a big job quadratic.
    by_name: BTreeMap<String, usize>,
}

impl Roles {
    fn new(all: Vec<(String, RoleDef)>) -> Self {
        let mut by_name = BTreeMap::new();
        for (i, (name, _)) in all.iter().enumerate() {
            by_name.entry(name.clone()).or_insert(i);
        }
        Self { all, by_name }
    }

    fn get(&self, name: &str) -> Option<&RoleDef> {
        self.by_name.get(name).map(|&i| &self.all[i].1)
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        self.all.iter().map(|(n, _)| n.as_str())
    }
}

/// A role entry's `count`, 1 when absent or not a positive integer.
fn count_of(entry: &Value) -> u64 {
    entry
        .get("count")
        .and_then(Value::as_u64)
        .filter(|c| *c > 0)
        .unwrap_or(1)
}

/// A role's definition from its entry (in `device_group`, `vm_group.host` or
/// `vm_group.vms`), defined at `pointer`.
fn role_def(entry: &Value, pointer: String, count: u64) -> RoleDef {
    RoleDef {
        pointer,
        device_type: string_at(entry, "device_type"),
        count,
    }
}

fn collect_roles(job: &Value) -> Roles {
    let mut all = Vec::new();
    if let Some(group) = job.get("device_group").and_then(Value::as_array) {
        for (i, entry) in group.iter().enumerate() {
            if let Some(role) = entry.get("role").and_then(Value::as_str) {
                let at = format!("/device_group/{i}/role");
                all.push((role.to_string(), role_def(entry, at, count_of(entry))));
            }
        }
    }
    if let Some(vm_group) = job.get("vm_group") {
        if let Some(host) = vm_group.get("host") {
            let (role, at) = match host.get("role").and_then(Value::as_str) {
                Some(role) => (role, "/vm_group/host/role"),
                None => (DEFAULT_HOST_ROLE, "/vm_group/host"),
            };
            all.push((role.to_string(), role_def(host, at.into(), 1)));
        }
        for (i, vm) in vms(job) {
            if let Some(role) = vm.get("role").and_then(Value::as_str) {
                let at = format!("/vm_group/vms/{i}/role");
                all.push((role.to_string(), role_def(vm, at, count_of(vm))));
            }
        }
    }
    Roles::new(all)
}

fn string_at(value: &Value, key: &str) -> Option<String> {
    value.get(key).and_then(Value::as_str).map(str::to_string)
}

fn vms(job: &Value) -> impl Iterator<Item = (usize, &Value)> {
    job.pointer("/vm_group/vms")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
}

fn actions(job: &Value) -> impl Iterator<Item = (usize, &Value)> {
    job.get("actions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
}

fn check_roles(roles: &Roles, out: &mut Vec<Diagnostic>) {
    let mut first_seen: BTreeMap<&str, &str> = BTreeMap::new();
    for (name, def) in &roles.all {
        if let Some(first) = first_seen.get(name.as_str()) {
            out.push(
                Diagnostic::error(&def.pointer, format!("role \"{name}\" is defined twice"))
                    .expected("a role name used once in the job")
                    .found(format!("\"{name}\", already defined at {first}"))
                    .hint("use count for several nodes of one role"),
            );
        } else {
            first_seen.insert(name, &def.pointer);
        }
    }
}

/// Node ids must be unique in a job (`lava-self`, `lava-group` and every MultiNode
/// call name nodes by them). Roles are unique already, so the only clash left is a role
/// named like another role's numbered node: `client-2` beside `client` with count 2.
/// Checked by name, not by listing every node, so a huge count costs nothing.
fn check_node_ids(roles: &Roles, out: &mut Vec<Diagnostic>) {
    for (name, def) in &roles.all {
        let Some((base, number)) = name.rsplit_once('-') else {
            continue;
        };
        let Some(owner) = roles.get(base) else {
            continue;
        };
        let numbered = number.parse::<u64>().ok().filter(|n| {
            // `client-02` is not a node id the dispatcher makes.
            *n >= 1 && *n <= owner.count && owner.count > 1 && n.to_string() == number
        });
        if let Some(n) = numbered {
            out.push(
                Diagnostic::error(
                    &def.pointer,
                    format!("role \"{name}\" has the node id of node {n} of role \"{base}\""),
                )
                .expected("node ids used once: a role with count N has nodes ROLE-1 … ROLE-N")
                .found(format!(
                    "\"{name}\", also node {n} of {base} ({})",
                    owner.pointer
                ))
                .hint(format!("rename role \"{name}\"")),
            );
        }
    }
}

/// An integer the typed job holds as one (a `u64`, or smaller), found at `at`: returned
/// when readable. JSON Schema calls any number without a fraction an integer, so `1e30`
/// and `2.0` pass the schema yet no integer type can read them: those are reported here,
/// with the range `min..=max` the value is for. Every other shape is the schema's.
fn integer_at(
    at: &str,
    value: &Value,
    what: &str,
    min: u64,
    max: u64,
    out: &mut Vec<Diagnostic>,
) -> Option<u64> {
    let Value::Number(number) = value else {
        return None;
    };
    if let Some(n) = number.as_u64() {
        return Some(n);
    }
    let float = number.as_f64().filter(|_| number.is_f64())?;
    // Bounds to compare with, not values to keep: f64's rounding does not matter.
    let (low, high) = (min as f64, max as f64);
    if float.fract() != 0.0 || float < low {
        return None; // The schema reports a fraction, and a number under its minimum.
    }
    let found = crate::schema_errors::found(value);
    out.push(if float > high {
        Diagnostic::error(
            at,
            format!("{what} {} is out of range", short_number(float)),
        )
        .expected(format!("an integer from {min} to {max}"))
        .found(found)
    } else {
        Diagnostic::error(at, format!("{what} must be written as a plain integer"))
            .expected(format!(
                "an integer from {min} to {max}, without a fraction or exponent"
            ))
            .found(found)
            .hint(format!("write {}", short_number(float)))
    });
    None
}

/// A whole float as the integer it stands for when that is short, else in exponent form.
fn short_number(float: f64) -> String {
    if float.abs() < 1e15 {
        format!("{float:.0}")
    } else {
        format!("{float:e}")
    }
}

/// Job and action timeouts: readable integers, and no longer than [`MAX_TIMEOUT_SECS`].
fn check_timeouts(job: &Value, out: &mut Vec<Diagnostic>) {
    let mut check = |at: String, value: &Value| {
        if let Some(secs) = integer_at(&at, value, "timeout", 1, MAX_TIMEOUT_SECS, out)
            && secs > MAX_TIMEOUT_SECS
        {
            out.push(
                Diagnostic::error(at, format!("timeout of {secs} s is longer than allowed"))
                    .expected(format!("at most {MAX_TIMEOUT_SECS} seconds (365 days)"))
                    .found(secs.to_string()),
            );
        }
    };
    let missing_timeout = match job.get("timeout") {
        Some(timeout) => {
            check("/timeout".to_string(), timeout);
            false
        }
        None => true,
    };
    for (i, action) in actions(job) {
        // Result submissions are ignored whole, their parameters included.
        if action
            .get("command")
            .and_then(Value::as_str)
            .is_some_and(is_result_submission)
        {
            continue;
        }
        if let Some(timeout) = action.pointer("/parameters/timeout") {
            check(format!("/actions/{i}/parameters/timeout"), timeout);
        }
    }
    if missing_timeout {
        out.push(
            Diagnostic::warning(
                "/timeout",
                format!("no job timeout: the job gets {DEFAULT_JOB_TIMEOUT_SECS} seconds"),
            )
            .hint("give \"timeout\" in seconds; it is also each action's default"),
        );
    }
}

fn check_counts(job: &Value, ctx: &ValidationContext, out: &mut Vec<Diagnostic>) {
    // The typed job holds counts as u32, whatever limit a lab sets.
    let max = ctx.limits.max_count.min(u64::from(u32::MAX));
    let mut count_at = |at: String, entry: &Value| {
        let value = entry.get("count")?;
        let count = integer_at(&at, value, "count", 1, max, out)?;
        if count > max {
            out.push(
                Diagnostic::error(at, format!("count {count} is over this lab's limit"))
                    .expected(format!("at most {max}"))
                    .found(count.to_string()),
            );
        }
        Some(count)
    };
    let mut group_total: u64 = 0;
    for (i, entry) in job
        .get("device_group")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        if let Some(count) = count_at(format!("/device_group/{i}/count"), entry) {
            group_total = group_total.saturating_add(count);
        }
    }
    let mut vm_total: u64 = 0;
    for (i, vm) in vms(job) {
        // A VM without a (readable) count is one VM.
        let count = count_at(format!("/vm_group/vms/{i}/count"), vm).unwrap_or(1);
        vm_total = vm_total.saturating_add(count);
    }
    let is_vm_group = job.get("vm_group").is_some();
    let max_vms = MAX_VMS_PER_GROUP as u64;
    if is_vm_group && vm_total > max_vms {
        out.push(
            Diagnostic::error(
                "/vm_group/vms",
                format!("the vm_group has {vm_total} VMs, more than a group can have"),
            )
            .expected(format!(
                "at most {MAX_VMS_PER_GROUP} VMs in all, counting each VM's count"
            ))
            .found(vm_total.to_string())
            .hint(format!(
                "the VMs of a group share one /24 network, with an address each: \
                 at most {MAX_VMS_PER_GROUP} of them; split the job"
            )),
        );
    }
    let total = if is_vm_group {
        vm_total.saturating_add(1)
    } else {
        group_total
    };
    let limit = ctx.limits.max_group_size;
    if total > limit {
        let at = if is_vm_group {
            "/vm_group/vms"
        } else {
            "/device_group"
        };
        out.push(
            Diagnostic::error(
                at,
                format!("the group has {total} nodes, over this lab's limit"),
            )
            .expected(format!("at most {limit} nodes in one job"))
            .found(total.to_string()),
        );
    }
}

fn check_device_types(job: &Value, ctx: &ValidationContext, out: &mut Vec<Diagnostic>) {
    let catalog = &ctx.catalog;
    let mut check = |at: String, name: &str, want: Want| {
        let fits = |class: DeviceTypeClass| match want {
            Want::Any => true,
            Want::Virtual => class == DeviceTypeClass::Virtual,
            Want::VmHost => matches!(
                class,
                DeviceTypeClass::Host {
                    virtualization: true,
                    ..
                }
            ),
        };
        let candidates = catalog.names_where(fits);
        match catalog.class(name) {
            Some(class) if fits(class) => {}
            Some(_) => out.push(
                Diagnostic::error(at, format!("device type \"{name}\" cannot be used here"))
                    .expected(format!(
                        "{}: {}",
                        want.describe(),
                        suggest::one_of(candidates)
                    ))
                    .found(format!("\"{name}\"")),
            ),
            None => out.push(
                Diagnostic::error(at, format!("unknown device type \"{name}\""))
                    .expected(format!(
                        "{}: {}",
                        want.describe(),
                        suggest::one_of(candidates.iter().copied())
                    ))
                    .found(format!("\"{name}\""))
                    .maybe_hint(suggest::did_you_mean(name, candidates.iter().copied())),
            ),
        }
    };
    if let Some(name) = job.get("device_type").and_then(Value::as_str) {
        check("/device_type".into(), name, Want::Any);
    }
    if let Some(group) = job.get("device_group").and_then(Value::as_array) {
        for (i, entry) in group.iter().enumerate() {
            if let Some(name) = entry.get("device_type").and_then(Value::as_str) {
                check(format!("/device_group/{i}/device_type"), name, Want::Any);
            }
        }
    }
    if let Some(name) = job
        .pointer("/vm_group/host/device_type")
        .and_then(Value::as_str)
    {
        check("/vm_group/host/device_type".into(), name, Want::VmHost);
    }
    for (i, vm) in vms(job) {
        if let Some(name) = vm.get("device_type").and_then(Value::as_str) {
            check(
                format!("/vm_group/vms/{i}/device_type"),
                name,
                Want::Virtual,
            );
        }
    }
}

#[derive(Clone, Copy)]
enum Want {
    Any,
    Virtual,
    VmHost,
}

impl Want {
    fn describe(self) -> &'static str {
        match self {
            Want::Any => "a device type of this lab",
            Want::Virtual => "a virtual machine type",
            Want::VmHost => "a host device type that supports virtualization",
        }
    }
}

/// The image URLs of an action, each with its pointer below the action's parameters
/// (`kernel`, `overlays/0`...), as the job gives them (possibly empty strings).
pub fn deploy_urls<'a>(command: &str, params: Option<&'a Value>) -> Vec<(String, &'a str)> {
    const SINGLE: [&str; 7] = [
        "image",
        "kernel",
        "ramdisk",
        "dtb",
        "rootfs",
        "nfsrootfs",
        "firmware",
    ];
    let Some(params) = params.filter(|_| command.starts_with("deploy_")) else {
        return Vec::new();
    };
    let mut urls: Vec<(String, &'a str)> = SINGLE
        .iter()
        .filter_map(|key| Some((key.to_string(), params.get(*key)?.as_str()?)))
        .collect();
    let overlays = params.get("overlays").and_then(Value::as_array);
    for (j, url) in overlays.into_iter().flatten().enumerate() {
        if let Some(text) = url.as_str() {
            urls.push((format!("overlays/{j}"), text));
        }
    }
    urls
}

fn check_actions(job: &Value, roles: &Roles, ctx: &ValidationContext, out: &mut Vec<Diagnostic>) {
    let job_timeout = job.get("timeout").and_then(Value::as_u64);
    // With two topologies the role checks would only echo that conflict.
    let single_device = (job.get("device_type").is_some() || job.get("target").is_some())
        && job.get("device_group").is_none()
        && job.get("vm_group").is_none();
    // The same for every action naming an unknown role: built once.
    let mut known_roles = None;
    // A hint compares the name with every role: only as many as a report can show get
    // one, so thousands of unknown roles among thousands of roles stay cheap.
    let mut hints_left = MAX_DIAGNOSTICS;
    for (i, action) in actions(job) {
        let at = format!("/actions/{i}");
        let command = action
            .get("command")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let params = action.get("parameters");
        if is_result_submission(command) {
            out.push(
                Diagnostic::warning(
                    pointer::push(&at, "command"),
                    format!("{command} is ignored"),
                )
                .hint("results are kept by the dispatcher: GET /api/v1/jobs/{id}/results"),
            );
            continue;
        }
        if let Some(role) = params.and_then(|p| p.get("role")).and_then(Value::as_str) {
            let role_at = format!("{at}/parameters/role");
            if single_device {
                out.push(
                    Diagnostic::error(role_at, "a single-device job has no roles")
                        .found(format!("\"{role}\""))
                        .hint("remove \"role\", or use device_group or vm_group"),
                );
            } else if roles.get(role).is_none() {
                out.push(
                    Diagnostic::error(role_at, format!("no role \"{role}\" in this job"))
                        .expected(
                            known_roles
                                .get_or_insert_with(|| {
                                    format!("one of {}", suggest::one_of(roles.names()))
                                })
                                .clone(),
                        )
                        .found(format!("\"{role}\""))
                        .maybe_hint(if hints_left > 0 {
                            hints_left -= 1;
                            suggest::did_you_mean(role, roles.names())
                        } else {
                            None
                        }),
                );
            }
        }
        for (key, text) in deploy_urls(command, params) {
            let url_at = format!("{at}/parameters/{key}");
            if text.is_empty() {
                out.push(
                    Diagnostic::warning(url_at, "empty URL: nothing can be deployed from it")
                        .hint("a lab refuses the job at submission until it names a file"),
                );
            } else {
                check_url_at(&url_at, text, ctx, out);
            }
        }
        check_deploy_target(&at, command, params, roles, job, ctx, out);
        // A timeout over MAX_TIMEOUT_SECS is an error of its own (check_timeouts).
        if let (Some(limit), Some(timeout)) = (
            job_timeout,
            params
                .and_then(|p| p.get("timeout"))
                .and_then(Value::as_u64),
        ) && timeout > limit
            && timeout <= MAX_TIMEOUT_SECS
        {
            out.push(
                Diagnostic::warning(
                    format!("{at}/parameters/timeout"),
                    "action timeout is longer than the job timeout, which ends the job first",
                )
                .expected(format!("at most {limit} (the job timeout)"))
                .found(timeout.to_string()),
            );
        }
        if command == "lava_test_shell" {
            check_test_shell(&at, params, ctx, out);
        }
        if command == "lava_command_run"
            && let Some(parser) = params.and_then(|p| p.get("parser")).and_then(Value::as_str)
        {
            check_parse_pattern(&format!("{at}/parameters/parser"), parser, out);
        }
        if command == "lava_command_run"
            && let Some(value) = params.and_then(|p| p.get("iterations"))
        {
            // The typed job holds it as a u32.
            let max = u64::from(u32::MAX);
            let at = format!("{at}/parameters/iterations");
            if let Some(n) = integer_at(&at, value, "iterations", 1, max, out)
                && n > max
            {
                out.push(
                    Diagnostic::error(at, format!("iterations {n} is out of range"))
                        .expected(format!("an integer from 1 to {max}"))
                        .found(n.to_string()),
                );
            }
        }
    }
}

/// The class of the device an action runs on, when validation can tell: its role's
/// device type, or a single-device job's. `None` for an action of every role of a group,
/// a job naming only a `target`, or a type the lab does not know (reported elsewhere).
fn action_class(
    role: Option<&str>,
    roles: &Roles,
    job: &Value,
    ctx: &ValidationContext,
) -> Option<DeviceTypeClass> {
    let device_type = match role {
        Some(role) => roles.get(role)?.device_type.clone()?,
        None => string_at(job, "device_type")?,
    };
    ctx.catalog.class(&device_type)
}

/// The deploy and boot parameters that mean something only on some devices, or only
/// together: login keys, `nfsrootfs` and `overlays`, and LAVA v1's board keys that a VM
/// (whose kernel qemu loads) or a host device (booted as its lab says) has no use for.
fn check_deploy_target(
    at: &str,
    command: &str,
    params: Option<&Value>,
    roles: &Roles,
    job: &Value,
    ctx: &ValidationContext,
    out: &mut Vec<Diagnostic>,
) {
    if !(command.starts_with("deploy_") || command == "boot_linaro_image") {
        return;
    }
    let Some(params) = params.and_then(Value::as_object) else {
        return;
    };
    let given = |key: &str| params.get(key).is_some_and(|v| v.as_str() != Some(""));
    let param_at = |key: &str| format!("{at}/parameters/{key}");
    for key in ["login_prompt", "password_prompt", "test_image_prompt"] {
        if let Some(pattern) = params.get(key).and_then(Value::as_str)
            && let Err(err) = prompt_compiles(pattern)
        {
            out.push(
                Diagnostic::error(
                    param_at(key),
                    format!("{key} is not a valid regular expression"),
                )
                .found(err.lines().last().unwrap_or_default().to_string()),
            );
        }
    }
    // Each login key is needed by another: name the missing one.
    for (key, needs, why) in [
        (
            "login_prompt",
            "username",
            "the console must answer the login prompt",
        ),
        (
            "username",
            "login_prompt",
            "the console sends it when it sees the login prompt",
        ),
        (
            "password_prompt",
            "password",
            "the console must answer the password prompt",
        ),
        (
            "password",
            "password_prompt",
            "the console sends it when it sees the password prompt",
        ),
        (
            "password_prompt",
            "login_prompt",
            "a password is asked after the user name",
        ),
    ] {
        if params.contains_key(key) && !params.contains_key(needs) {
            out.push(
                Diagnostic::error(param_at(key), format!("{key} without {needs}"))
                    .expected(format!("\"{needs}\" too: {why}")),
            );
        }
    }
    let class = action_class(params.get("role").and_then(Value::as_str), roles, job, ctx);
    if let Some(DeviceTypeClass::Host {
        boots_job_images: false,
        ..
    }) = class
    {
        let applied: Vec<&str> = params
            .keys()
            .map(String::as_str)
            .filter(|k| !matches!(*k, "role" | "timeout"))
            .collect();
        if !applied.is_empty() {
            out.push(
                Diagnostic::warning(at, format!("{command} is not applied to a host device"))
                    .found(format!("parameters {}", applied.join(", ")))
                    .hint(
                        "a board or an ssh-host boots as its lab says (a qemu-host boots a \
                         job's images); deploy to the VMs by their role",
                    ),
            );
        }
        return;
    }
    if let Some(other) = params
        .get("bootloadertype")
        .and_then(Value::as_str)
        .filter(|b| *b != crate::model::UEFI)
    {
        out.push(
            Diagnostic::warning(
                param_at("bootloadertype"),
                format!("bootloadertype {other:?} has no effect"),
            )
            .hint("qemu loads a VM's kernel itself; \"uefi\" boots the VM with its device type's UEFI firmware"),
        );
    }
    for (key, why) in [
        (
            "boot_cmds",
            "qemu loads a VM's kernel itself, with the device type's command line",
        ),
        (
            "options",
            "devices are configured by the lab's device-type files, not by jobs",
        ),
    ] {
        if params.contains_key(key) {
            out.push(Diagnostic::warning(param_at(key), format!("{key} has no effect")).hint(why));
        }
    }
    if given("nfsrootfs") {
        for other in ["ramdisk", "rootfs"] {
            if given(other) {
                out.push(
                    Diagnostic::error(
                        param_at(other),
                        format!("{other} with nfsrootfs: two root file systems"),
                    )
                    .expected("nfsrootfs alone: it is booted as the VM's initramfs"),
                );
            }
        }
    }
    let overlays = params
        .get("overlays")
        .and_then(Value::as_array)
        .is_some_and(|o| !o.is_empty());
    if overlays && !given("ramdisk") && !given("nfsrootfs") {
        out.push(
            Diagnostic::error(
                param_at("overlays"),
                "overlays need a ramdisk or an nfsrootfs to be unpacked into",
            )
            .hint("overlays are appended to the initramfs; a disk image cannot take them"),
        );
    }
}

fn check_test_shell(
    at: &str,
    params: Option<&Value>,
    ctx: &ValidationContext,
    out: &mut Vec<Diagnostic>,
) {
    let Some(params) = params.filter(|p| p.is_object()) else {
        return;
    };
    let urls = params.get("testdef_urls").and_then(Value::as_array);
    let repos = params.get("testdef_repos").and_then(Value::as_array);
    if urls.is_none_or(Vec::is_empty) && repos.is_none_or(Vec::is_empty) {
        out.push(
            Diagnostic::error(
                format!("{at}/parameters"),
                "lava_test_shell has no test definition",
            )
            .expected("a non-empty testdef_urls or testdef_repos"),
        );
    }
    for (j, url) in urls.into_iter().flatten().enumerate() {
        if let Some(text) = url.as_str() {
            check_url_at(&format!("{at}/parameters/testdef_urls/{j}"), text, ctx, out);
        }
    }
    for (j, repo) in repos.into_iter().flatten().enumerate() {
        check_repo(
            &format!("{at}/parameters/testdef_repos/{j}"),
            repo,
            ctx,
            out,
        );
        if let Some(text) = repo.get("url").and_then(Value::as_str) {
            check_url_at(
                &format!("{at}/parameters/testdef_repos/{j}/url"),
                text,
                ctx,
                out,
            );
        }
        if let Some(inline) = repo.get("inline") {
            check_test_definition(
                &format!("{at}/parameters/testdef_repos/{j}/inline"),
                inline,
                out,
            );
        }
    }
}

/// A `tar-repo`'s archive: standard base64, line breaks allowed (LAVA v1 read it with
/// Python's `base64.decode`, which skips them).
pub(crate) fn decode_base64(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .ok()
}

/// One `testdef_repos` entry beyond the schema: its source's URL under the policy,
/// `testdef` and `revision` only where they mean something, `testdef` a relative path
/// that stays inside the tree, `tar-repo` real base64.
fn check_repo(at: &str, repo: &Value, ctx: &ValidationContext, out: &mut Vec<Diagnostic>) {
    let text = |key: &str| repo.get(key).and_then(Value::as_str);
    for (key, schemes) in [
        ("git-repo", &["git", "http", "https", "file"]),
        ("bzr-repo", &["bzr", "http", "https", "file"]),
    ] {
        // Launchpad's short names (`lp:project`) are what most bzr jobs use.
        if let Some(url) = text(key).filter(|u| key == "git-repo" || !u.starts_with("lp:")) {
            check_repo_url(&pointer::push(at, key), url, schemes, ctx, out);
        }
    }
    if let Some(archive) = text("tar-repo")
        && decode_base64(archive).is_none()
    {
        out.push(
            Diagnostic::error(
                pointer::push(at, "tar-repo"),
                "tar-repo is not valid base64",
            )
            .expected("a tar archive encoded in standard base64"),
        );
    }
    let is_tree = ["git-repo", "bzr-repo", "tar-repo"]
        .iter()
        .any(|k| repo.get(*k).is_some());
    if let Some(path) = text("testdef") {
        // With no source at all, the schema already said so.
        if !is_tree && (repo.get("inline").is_some() || repo.get("url").is_some()) {
            out.push(
                Diagnostic::error(
                    pointer::push(at, "testdef"),
                    "testdef has no meaning without git-repo, bzr-repo or tar-repo",
                )
                .hint("inline definitions are the definition; a url names its file itself"),
            );
        }
        let climbs = std::path::Path::new(path).components().any(|c| {
            !matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        });
        if climbs {
            out.push(
                Diagnostic::error(
                    pointer::push(at, "testdef"),
                    "testdef must be a path inside the repository",
                )
                .expected("a relative path without \"..\", such as tests/smoke.yaml")
                .found(format!("\"{path}\"")),
            );
        }
    }
    if repo.get("revision").is_some()
        && repo.get("git-repo").is_none()
        && repo.get("bzr-repo").is_none()
    {
        out.push(
            Diagnostic::error(
                pointer::push(at, "revision"),
                "revision has no meaning without git-repo or bzr-repo",
            )
            .hint("remove it, or name the repository it is a revision of"),
        );
    }
}

/// A repository's URL: one of `schemes`; `file://` under the lab's roots (a directory,
/// so only the lexical check here); network URLs with a host.
fn check_repo_url(
    at: &str,
    text: &str,
    schemes: &[&str],
    ctx: &ValidationContext,
    out: &mut Vec<Diagnostic>,
) {
    let expected = format!(
        "a URL with scheme {} (file:// under an allowed root)",
        schemes.join(", ")
    );
    let problem = match url::Url::parse(text) {
        Err(err) => Some(format!("not a URL: {err}")),
        Ok(url) if !schemes.contains(&url.scheme()) => {
            Some(format!("unsupported URL scheme \"{}\"", url.scheme()))
        }
        Ok(url) if url.scheme() == "file" => urls::check_url(text, &ctx.file_roots)
            .err()
            .map(|e| e.to_string()),
        Ok(url) if url.host_str().is_none_or(str::is_empty) => {
            Some("the URL has no host".to_string())
        }
        Ok(_) => None,
    };
    if let Some(problem) = problem {
        out.push(
            Diagnostic::error(at, format!("repository URL refused: {problem}"))
                .expected(expected)
                .found(format!("\"{text}\"")),
        );
    }
}

/// What a schema cannot say about a test definition at `at`: its parse pattern, and a
/// `fixupdict` where LAVA never read one.
pub(crate) fn check_test_definition(at: &str, testdef: &Value, out: &mut Vec<Diagnostic>) {
    if let Some(pattern) = testdef.pointer("/parse/pattern").and_then(Value::as_str) {
        check_parse_pattern(&format!("{at}/parse/pattern"), pattern, out);
    }
    if testdef.get("fixupdict").is_some() {
        out.push(
            Diagnostic::warning(
                format!("{at}/fixupdict"),
                "fixupdict outside parse is ignored: LAVA read it only under parse",
            )
            .expected("parse: {pattern: ..., fixupdict: {...}}"),
        );
    }
}

/// A parse pattern must compile and name the groups results are made of.
pub(crate) fn check_parse_pattern(at: &str, pattern: &str, out: &mut Vec<Diagnostic>) {
    match crate::pattern::compile(pattern) {
        Err(err) => out.push(
            Diagnostic::error(at, "parse pattern is not a valid regular expression")
                .found(first_line(&err.to_string())),
        ),
        Ok(re) => {
            let names: BTreeSet<&str> = re.capture_names().flatten().collect();
            for needed in ["test_case_id", "result"] {
                if !names.contains(needed) {
                    out.push(
                        Diagnostic::error(
                            at,
                            format!("parse pattern has no group named \"{needed}\""),
                        )
                        .expected("named groups (?P<test_case_id>...) and (?P<result>...)"),
                    );
                }
            }
        }
    }
}

fn check_url_at(at: &str, text: &str, ctx: &ValidationContext, out: &mut Vec<Diagnostic>) {
    if let Err(err) = urls::check_url(text, &ctx.file_roots) {
        let roots: Vec<String> = ctx
            .file_roots
            .iter()
            .map(|r| r.display().to_string())
            .collect();
        let mut d = Diagnostic::error(at, format!("URL refused: {err}"))
            .expected("file:///absolute/path under an allowed root, http:// or https://")
            .found(format!("\"{text}\""));
        if matches!(err, urls::UrlError::OutsideRoots(_)) {
            d = d.hint(format!("allowed roots: {}", roots.join(", ")));
        }
        out.push(d);
    }
}

fn check_vms(job: &Value, ctx: &ValidationContext, out: &mut Vec<Diagnostic>) {
    let Some(vm_group) = job.get("vm_group") else {
        return;
    };
    // Which roles get an image from a deploy action, and where.
    let mut deployed: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut roleless_deploys = Vec::new();
    let mut host_has_test_shell = false;
    let host_role = vm_group
        .pointer("/host/role")
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT_HOST_ROLE);
    for (i, action) in actions(job) {
        let command = action
            .get("command")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let role = action.pointer("/parameters/role").and_then(Value::as_str);
        if command.starts_with("deploy_") {
            match role {
                Some(role) => deployed
                    .entry(role)
                    .or_default()
                    .push(format!("/actions/{i}")),
                None => roleless_deploys.push(format!("/actions/{i}")),
            }
        }
        // Commands of a lava_command_run can call lava-start-vms as a test shell can.
        if matches!(command, "lava_test_shell" | "lava_command_run")
            && role.is_none_or(|r| r == host_role)
        {
            host_has_test_shell = true;
        }
    }
    // Each deploy action conflicts once, with the first VM with an image it would also
    // deploy to: pairing every such VM with every such action would be quadratic.
    let mut conflicts_reported: BTreeSet<&str> = BTreeSet::new();
    let mut roleless_reported = false;
    for (i, vm) in vms(job) {
        let role = vm.get("role").and_then(Value::as_str).unwrap_or_default();
        let at = format!("/vm_group/vms/{i}");
        let own_image = vm.get("image").and_then(Value::as_str);
        if let Some(image) = own_image {
            check_url_at(&format!("{at}/image"), image, ctx, out);
            let role_deploys = deployed
                .get(role)
                .filter(|_| conflicts_reported.insert(role))
                .into_iter()
                .flatten();
            let roleless = (!std::mem::replace(&mut roleless_reported, true))
                .then_some(&roleless_deploys)
                .into_iter()
                .flatten();
            for action_at in role_deploys.chain(roleless) {
                out.push(
                    Diagnostic::error(action_at, format!("a second image for role \"{role}\""))
                        .expected("one image per VM: its \"image\" or a deploy action, not both")
                        .found(format!("{at}/image and this deploy action"))
                        .hint("give the deploy action a \"role\" that is not a VM with an image"),
                );
            }
        } else if !deployed.contains_key(role) && roleless_deploys.is_empty() && !role.is_empty() {
            out.push(
                Diagnostic::error(&at, format!("VM role \"{role}\" has no image"))
                    .expected("\"image\", or a deploy_linaro_image / deploy_linaro_kernel action for this role")
                    .hint("add \"image\": \"file:///...\" to this VM"),
            );
        }
        if let Some(prompt) = vm.get("shell_prompt").and_then(Value::as_str)
            && let Err(err) = prompt_compiles(prompt)
        {
            out.push(
                Diagnostic::error(
                    format!("{at}/shell_prompt"),
                    "shell_prompt is not a valid regular expression",
                )
                .found(first_line(&err)),
            );
        }
    }
    let auto_start = vm_group
        .get("auto_start_vms")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    if !auto_start && !host_has_test_shell {
        out.push(
            Diagnostic::error(
                "/vm_group/auto_start_vms",
                "with auto_start_vms false the VMs would never start",
            )
            .expected(format!(
                "a lava_test_shell for role \"{host_role}\" that calls lava-start-vms"
            ))
            .hint("set auto_start_vms to true, or add a host test shell"),
        );
    }
}

fn first_line(text: &str) -> String {
    text.lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or(text)
        .trim()
        .to_string()
}

/// Whether `pattern` compiles as the runner will compile it (`regex`, within its size
/// limit), and the error when it does not. Remembered per short pattern: a lab's jobs
/// use a few prompts over and over, and compiling one builds its automata (a tenth of
/// the daemon's time under a stream of submissions when done for every job).
fn prompt_compiles(pattern: &str) -> Result<(), String> {
    type Seen = std::sync::Mutex<std::collections::HashMap<String, Result<(), String>>>;
    static SEEN: std::sync::OnceLock<Seen> = std::sync::OnceLock::new();
    /// Longer patterns are compiled each time (no job's prompt is long; a hostile
    /// job's must not fill the memory).
    const REMEMBERED_LEN: usize = 256;
    const REMEMBERED: usize = 1024;
    let seen = SEEN.get_or_init(Seen::default);
    let lock = || {
        seen.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    if let Some(known) = lock().get(pattern) {
        return known.clone();
    }
    let compiled = regex::Regex::new(pattern)
        .map(drop)
        .map_err(|e| e.to_string());
    if pattern.len() <= REMEMBERED_LEN {
        let mut seen = lock();
        if seen.len() >= REMEMBERED {
            seen.clear();
        }
        seen.insert(pattern.to_string(), compiled.clone());
    }
    compiled
}

#[cfg(test)]
mod prompt_tests {
    use super::prompt_compiles;

    #[test]
    fn a_prompt_is_refused_as_the_runner_would_refuse_it_and_each_answer_is_kept() {
        assert_eq!(prompt_compiles("root@debian:~# "), Ok(()));
        assert_eq!(prompt_compiles("root@debian:~# "), Ok(()), "remembered");
        let unclosed = prompt_compiles("(unclosed").unwrap_err();
        assert!(unclosed.contains("unclosed group"), "{unclosed}");
        assert_eq!(
            prompt_compiles("(unclosed"),
            Err(unclosed),
            "remembered too"
        );
        // Well formed, but past the size limit the runner compiles with: refused at
        // validation, not halfway through a job.
        let huge = prompt_compiles("a{100000000}").unwrap_err();
        assert!(huge.contains("size limit"), "{huge}");
    }
}
