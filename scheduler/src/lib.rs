//! Choosing devices for queued jobs: all of a job's devices at once or none (never
//! holding some while waiting for others, LAVA's LAVA-1285 starvation), highest
//! priority first, and a job that has waited too long keeps smaller jobs off the
//! devices it needs until it gets them.
//!
//! Pure: it reads a snapshot of the queue and the devices and returns assignments; the
//! daemon applies them in one storage transaction.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use job_schemas::Topology;
use std::time::Duration;

use states::{DeviceHealth, DeviceState, schedulable};

/// A device as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct DeviceView {
    pub hostname: String,
    pub device_type: String,
    pub tags: BTreeSet<String>,
    pub state: DeviceState,
    pub health: DeviceHealth,
    /// Its type has a health check and its health is not known: only that check may
    /// have it.
    pub awaiting_check: bool,
}

impl DeviceView {
    /// A device as if idle and good: what could ever serve a job, whatever it does now
    /// (the checks at submission).
    pub fn as_if_idle(
        hostname: String,
        device_type: String,
        tags: impl IntoIterator<Item = String>,
    ) -> Self {
        Self {
            hostname,
            device_type,
            tags: tags.into_iter().collect(),
            state: DeviceState::Idle,
            health: DeviceHealth::Good,
            awaiting_check: false,
        }
    }
}

/// One device a job needs (one per node that runs on a device of its own).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Need {
    /// `None`: any type (a job naming only its `target` device).
    pub device_type: Option<String>,
    pub tags: BTreeSet<String>,
    /// A particular device (`target` of a single-device job).
    pub hostname: Option<String>,
}

/// A queued job.
#[derive(Debug, Clone)]
pub struct Request {
    pub job_id: u64,
    /// 0 (lowest) to 100.
    pub priority: u8,
    /// How long it has been queued.
    pub waited: Duration,
    /// Shared with the daemon's copy of the queued job: a pass over a long queue
    /// copies no needs.
    pub needs: Arc<[Need]>,
    /// A device's health check (its need names the device): runs before any other
    /// job, and is the only job a device awaiting its check may take.
    pub health_check: bool,
}

/// Devices given to a job: `devices[i]` serves `needs[i]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub job_id: u64,
    pub devices: Vec<String>,
}

/// Scheduling policy.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// After waiting this long a job is starving: devices it could use are given to no
    /// lower job until it runs.
    pub starvation: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            starvation: Duration::from_secs(30 * 60),
        }
    }
}

/// The devices a job needs: the host of a vm_group (its VMs run there), one device per
/// node otherwise.
pub fn needs(job: &job_schemas::Job) -> Vec<Need> {
    let tags = |t: &[String]| t.iter().cloned().collect::<BTreeSet<String>>();
    match &job.topology {
        Topology::VmGroup(group) => vec![Need {
            device_type: Some(group.host_device_type.clone()),
            tags: tags(&group.host_tags),
            hostname: None,
        }],
        Topology::Single {
            device_type,
            target,
        } => vec![Need {
            device_type: device_type.clone(),
            tags: tags(&job.tags),
            hostname: target.clone(),
        }],
        Topology::DeviceGroup { roles } => roles
            .iter()
            .flat_map(|r| {
                (0..r.count).map(|_| Need {
                    device_type: Some(r.device_type.clone()),
                    tags: tags(&r.tags),
                    hostname: None,
                })
            })
            .collect(),
    }
}

fn fits(need: &Need, device: &DeviceView) -> bool {
    need.device_type
        .as_ref()
        .is_none_or(|t| *t == device.device_type)
        && need.tags.is_subset(&device.tags)
        && need.hostname.as_ref().is_none_or(|h| *h == device.hostname)
}

/// What a pass decided: the jobs that start now, and why each other job waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub assignments: Vec<Assignment>,
    /// `(job id, reason)` of every queued job that got no devices, in queue order:
    /// "waiting for a free kvm: kvm-01 runs job 7, kvm-02 is in maintenance". Jobs
    /// that wait for the same reason share its text.
    pub waiting: Vec<(u64, Arc<str>)>,
}

/// Assigns devices to as many queued jobs as can run now, in priority order.
pub fn plan(queue: &[Request], devices: &[DeviceView], policy: Policy) -> Vec<Assignment> {
    plan_explained(queue, devices, policy).assignments
}

/// [`plan`], saying why each job that gets nothing waits.
pub fn plan_explained(queue: &[Request], devices: &[DeviceView], policy: Policy) -> Plan {
    let mut order: Vec<&Request> = queue.iter().collect();
    // Health checks first (they decide which devices may take jobs at all); then the
    // highest priority; among equals, the longest waiting.
    order.sort_by(|a, b| {
        b.health_check
            .cmp(&a.health_check)
            .then(b.priority.cmp(&a.priority))
            .then(b.waited.cmp(&a.waited))
    });
    // Device index -> the job it went to (taken) or is kept for (withheld).
    let mut taken: HashMap<usize, u64> = HashMap::new();
    let mut withheld: HashMap<usize, u64> = HashMap::new();
    let mut assignments = Vec::new();
    let mut unserved = Vec::new();
    for request in order {
        let usable: Vec<usize> = (0..devices.len())
            .filter(|i| usable_by(request, &devices[*i]))
            .filter(|i| !taken.contains_key(i) && !withheld.contains_key(i))
            .collect();
        match match_all(&request.needs, devices, &usable) {
            Some(chosen) => {
                taken.extend(chosen.iter().map(|i| (*i, request.job_id)));
                assignments.push(Assignment {
                    job_id: request.job_id,
                    devices: chosen
                        .iter()
                        .map(|i| devices[*i].hostname.clone())
                        .collect(),
                });
            }
            // A job no set of the lab's devices could ever serve (submitted before the
            // lab shrank) withholds nothing: the hold would idle devices forever.
            None if request.waited >= policy.starvation
                && shortfall(&request.needs, devices).is_none() =>
            {
                // Keep for it every device it could use, busy or not: as they free up
                // no smaller job may take them first.
                for (i, device) in devices.iter().enumerate() {
                    if request.needs.iter().any(|n| fits(n, device)) {
                        withheld.entry(i).or_insert(request.job_id);
                    }
                }
                unserved.push(request);
            }
            None => unserved.push(request),
        }
    }
    // A long queue is mostly jobs that need the same devices and wait for the same
    // reason: it is worked out once for each set of needs (requests that share their
    // `needs` allocation, as the daemon gives jobs that need the same), so a pass does
    // not hash every job's needs. (A job devices are held for is told of them apart:
    // they do not keep it waiting.)
    let holders: BTreeSet<u64> = withheld.values().copied().collect();
    let mut reasons: HashMap<(*const Need, bool), Arc<str>> = HashMap::new();
    let mut waiting: Vec<(u64, Arc<str>)> = unserved
        .into_iter()
        .map(|r| {
            let reason = if holders.contains(&r.job_id) {
                Arc::from(why_waiting(r, devices, &taken, &withheld))
            } else {
                reasons
                    .entry((r.needs.as_ptr(), r.health_check))
                    .or_insert_with(|| Arc::from(why_waiting(r, devices, &taken, &withheld)))
                    .clone()
            };
            (r.job_id, reason)
        })
        .collect();
    waiting.sort_by_key(|(id, _)| *id);
    Plan {
        assignments,
        waiting,
    }
}

/// Whether a device is left, after `assignments`, that a job other than a health check
/// could take. When none is, a job submitted later can only wait, whatever it needs,
/// until something frees a device: and why it waits depends only on the devices.
pub fn any_left_for_jobs(devices: &[DeviceView], assignments: &[Assignment]) -> bool {
    let given: BTreeSet<&str> = assignments
        .iter()
        .flat_map(|a| a.devices.iter().map(String::as_str))
        .collect();
    devices
        .iter()
        .any(|d| usable(false, d) && !given.contains(d.hostname.as_str()))
}

/// Whether `device` could serve `request` now, were nobody else asking.
fn usable_by(request: &Request, device: &DeviceView) -> bool {
    usable(request.health_check, device)
}

/// Whether `device` could serve a job now (a health check when `health_check`), were
/// nobody else asking.
fn usable(health_check: bool, device: &DeviceView) -> bool {
    schedulable(device.state, device.health) && (health_check || !device.awaiting_check)
}

/// Each need of `needs` once, with how many of it there are.
fn kinds(needs: &[Need]) -> Vec<(&Need, usize)> {
    let mut kinds: Vec<(&Need, usize)> = Vec::new();
    for need in needs {
        match kinds.iter_mut().find(|(n, _)| *n == need) {
            Some((_, count)) => *count += 1,
            None => kinds.push((need, 1)),
        }
    }
    kinds
}

/// What a need asks for, as a person says it: `kvm`, `kvm with tags a, b`, `kvm-01`.
fn describe_need(need: &Need) -> String {
    let mut what = match (&need.hostname, &need.device_type) {
        (Some(host), _) => host.clone(),
        (None, Some(device_type)) => device_type.clone(),
        (None, None) => "device".to_string(),
    };
    if !need.tags.is_empty() {
        let tags: Vec<&str> = need.tags.iter().map(String::as_str).collect();
        what.push_str(&format!(" with tags {}", tags.join(", ")));
    }
    what
}

/// Why a device a job could use is not the job's now.
fn why_not(
    request: &Request,
    index: usize,
    device: &DeviceView,
    taken: &HashMap<usize, u64>,
    withheld: &HashMap<usize, u64>,
) -> String {
    let host = &device.hostname;
    match (device.state, device.health) {
        (DeviceState::Reserved(job) | DeviceState::Running(job), _) => {
            format!("{host} runs job {job}")
        }
        (DeviceState::Offline, _) => format!("{host} is offline"),
        (_, DeviceHealth::Bad) => format!("{host} is bad"),
        (_, DeviceHealth::Maintenance) => format!("{host} is in maintenance"),
        (_, DeviceHealth::Retired) => format!("{host} is retired"),
        _ if device.awaiting_check && !request.health_check => {
            format!("{host} awaits its health check")
        }
        _ => match (taken.get(&index), withheld.get(&index)) {
            // Given to a job that comes first, in this pass: it runs it from now on.
            (Some(job), _) => format!("{host} runs job {job}"),
            (None, Some(job)) => format!("{host} is held for job {job}, which has waited longer"),
            (None, None) => format!("{host} is free"),
        },
    }
}

/// Why `request` got no devices in this pass: for each kind of device it is short of,
/// what each such device is doing.
fn why_waiting(
    request: &Request,
    devices: &[DeviceView],
    taken: &HashMap<usize, u64>,
    withheld: &HashMap<usize, u64>,
) -> String {
    let mut parts = Vec::new();
    for (need, wanted) in kinds(&request.needs) {
        let fitting: Vec<usize> = (0..devices.len())
            .filter(|i| fits(need, &devices[*i]) && devices[*i].health != DeviceHealth::Retired)
            .collect();
        // A device kept for this very job does not keep it waiting.
        let held_for_another = |i: &usize| withheld.get(i).is_some_and(|j| *j != request.job_id);
        let free = fitting
            .iter()
            .filter(|i| {
                usable_by(request, &devices[**i]) && !taken.contains_key(i) && !held_for_another(i)
            })
            .count();
        if free >= wanted {
            continue;
        }
        let what = describe_need(need);
        let head = match wanted {
            1 => format!("waiting for a free {what}"),
            n => format!("waiting for {n} free {what} ({free} free now)"),
        };
        if fitting.is_empty() {
            parts.push(format!("{head}: the lab has none"));
            continue;
        }
        let busy: Vec<String> = fitting
            .iter()
            .filter(|i| {
                !usable_by(request, &devices[**i]) || taken.contains_key(i) || held_for_another(i)
            })
            .map(|i| why_not(request, *i, &devices[*i], taken, withheld))
            .collect();
        parts.push(format!("{head}: {}", busy.join(", ")));
    }
    if parts.is_empty() {
        // Enough of each kind, but not all at once (overlapping tags).
        return "waiting: the devices it needs are free, but not a set that serves every \
                node at once"
            .to_string();
    }
    parts.join("; ")
}

/// Why no set of `devices` could ever serve `needs`, whatever they are doing now (only
/// retired devices never come back), or `None` when some set could.
pub fn shortfall(needs: &[Need], devices: &[DeviceView]) -> Option<String> {
    let present: Vec<usize> = (0..devices.len())
        .filter(|i| devices[*i].health != DeviceHealth::Retired)
        .collect();
    if match_all(needs, devices, &present).is_some() {
        return None;
    }
    // Name the first kind of device that is short; overlapping tags can make a job
    // unsatisfiable with enough of each kind, which the last line says.
    for (need, wanted) in kinds(needs) {
        let have = present.iter().filter(|i| fits(need, &devices[**i])).count();
        if have < wanted {
            let mut what = match &need.device_type {
                Some(device_type) => format!("device_type \"{device_type}\""),
                None => "any device type".to_string(),
            };
            if !need.tags.is_empty() {
                let tags: Vec<&str> = need.tags.iter().map(String::as_str).collect();
                what.push_str(&format!(" with tags {}", tags.join(", ")));
            }
            if let Some(host) = &need.hostname {
                what.push_str(&format!(" named \"{host}\""));
            }
            return Some(format!(
                "the job needs {wanted} device(s) of {what}; the lab has {have}"
            ));
        }
    }
    Some("the lab has no set of devices that serves every node at once".to_string())
}

/// A device for every need, each device used once, or `None` (bipartite matching by
/// augmenting paths, so overlapping tags cannot make a satisfiable job look stuck).
fn match_all(needs: &[Need], devices: &[DeviceView], usable: &[usize]) -> Option<Vec<usize>> {
    let mut owner: Vec<Option<usize>> = vec![None; devices.len()];
    for need in 0..needs.len() {
        let mut seen = vec![false; devices.len()];
        if !augment(need, needs, devices, usable, &mut owner, &mut seen) {
            return None;
        }
    }
    let mut chosen = vec![0; needs.len()];
    for (device, need) in owner.iter().enumerate() {
        if let Some(need) = need {
            chosen[*need] = device;
        }
    }
    Some(chosen)
}

fn augment(
    need: usize,
    needs: &[Need],
    devices: &[DeviceView],
    usable: &[usize],
    owner: &mut [Option<usize>],
    seen: &mut [bool],
) -> bool {
    // A free device first: move other needs only when none is left.
    if let Some(&device) = usable
        .iter()
        .find(|&&d| owner[d].is_none() && fits(&needs[need], &devices[d]))
    {
        owner[device] = Some(need);
        return true;
    }
    for &device in usable {
        if seen[device] || !fits(&needs[need], &devices[device]) {
            continue;
        }
        seen[device] = true;
        let free = match owner[device] {
            None => true,
            Some(other) => augment(other, needs, devices, usable, owner, seen),
        };
        if free {
            owner[device] = Some(need);
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(name: &str, kind: &str, tags: &[&str]) -> DeviceView {
        DeviceView {
            hostname: name.into(),
            device_type: kind.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            state: DeviceState::Idle,
            health: DeviceHealth::Good,
            awaiting_check: false,
        }
    }

    fn need(kind: &str, tags: &[&str]) -> Need {
        Need {
            device_type: Some(kind.into()),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            hostname: None,
        }
    }

    fn request(id: u64, priority: u8, waited_min: u64, needs: Vec<Need>) -> Request {
        Request {
            job_id: id,
            priority,
            waited: Duration::from_secs(waited_min * 60),
            needs: needs.into(),
            health_check: false,
        }
    }

    #[test]
    fn a_job_that_gets_nothing_says_what_each_device_it_could_use_is_doing() {
        let mut devices = [
            device("kvm-01", "kvm", &[]),
            device("kvm-02", "kvm", &[]),
            device("kvm-03", "kvm", &[]),
        ];
        devices[0].state = DeviceState::Running(7);
        devices[1].health = DeviceHealth::Maintenance;
        let urgent = request(9, 90, 0, vec![need("kvm", &[])]);
        let later = request(10, 10, 0, vec![need("kvm", &[])]);
        let arm = request(11, 10, 0, vec![need("panda", &[]), need("kvm", &[])]);
        let alike = Request {
            needs: later.needs.clone(),
            ..request(13, 10, 0, Vec::new())
        };
        let planned = plan_explained(&[later, urgent, arm, alike], &devices, Policy::default());
        assert_eq!(planned.assignments.len(), 1);
        // Jobs that share their needs share one reason, worked out once.
        let (last, reason) = planned.waiting.last().unwrap().clone();
        assert_eq!(last, 13);
        assert!(Arc::ptr_eq(&reason, &planned.waiting[0].1));
        let planned = Plan {
            waiting: planned.waiting[..2].to_vec(),
            ..planned
        };
        assert_eq!(
            planned.waiting,
            [
                (
                    10,
                    "waiting for a free kvm: kvm-01 runs job 7, kvm-02 is in maintenance, \
                     kvm-03 runs job 9"
                        .into()
                ),
                (
                    11,
                    "waiting for a free panda: the lab has none; waiting for a free kvm: \
                     kvm-01 runs job 7, kvm-02 is in maintenance, kvm-03 runs job 9"
                        .into()
                ),
            ]
        );

        // A starving job keeps the devices it could use from smaller jobs, which say so.
        devices[1].health = DeviceHealth::Good;
        let starving = request(3, 10, 60, vec![need("kvm", &[]); 3]);
        let small = request(12, 5, 0, vec![need("kvm", &[])]);
        let planned = plan_explained(&[starving, small], &devices, Policy::default());
        assert!(planned.assignments.is_empty());
        assert_eq!(
            planned.waiting[0],
            (
                3,
                "waiting for 3 free kvm (2 free now): kvm-01 runs job 7".into()
            )
        );
        assert_eq!(
            planned.waiting[1],
            (
                12,
                "waiting for a free kvm: kvm-01 runs job 7, kvm-02 is held for job 3, which \
                 has waited longer, kvm-03 is held for job 3, which has waited longer"
                    .into()
            )
        );
    }

    #[test]
    fn a_device_awaiting_its_health_check_takes_only_that_check_which_goes_first() {
        let mut devices = [device("kvm-01", "kvm", &[]), device("kvm-02", "kvm", &[])];
        devices[0].health = DeviceHealth::Unknown;
        devices[0].awaiting_check = true;
        // An urgent user job waiting long cannot have the unchecked device.
        let user = request(1, 100, 600, vec![need("kvm", &[]); 2]);
        assert!(plan(&[user], &devices, Policy::default()).is_empty());
        let check = Request {
            health_check: true,
            needs: vec![Need {
                hostname: Some("kvm-01".into()),
                ..need("kvm", &[])
            }]
            .into(),
            ..request(2, 0, 0, Vec::new())
        };
        let single = request(3, 100, 600, vec![need("kvm", &[])]);
        let planned = plan(&[single, check], &devices, Policy::default());
        assert_eq!(
            planned,
            [
                Assignment {
                    job_id: 2,
                    devices: vec!["kvm-01".into()],
                },
                Assignment {
                    job_id: 3,
                    devices: vec!["kvm-02".into()],
                },
            ]
        );
    }

    #[test]
    fn a_group_gets_all_its_devices_or_none() {
        let devices = [device("kvm-01", "kvm", &[]), device("kvm-02", "kvm", &[])];
        let group = request(1, 50, 0, vec![need("kvm", &[]); 3]);
        assert!(
            plan(&[group], &devices, Policy::default()).is_empty(),
            "2 devices cannot serve 3 nodes"
        );
        let pair = request(2, 50, 0, vec![need("kvm", &[]); 2]);
        let planned = plan(&[pair], &devices, Policy::default());
        assert_eq!(
            planned,
            [Assignment {
                job_id: 2,
                devices: vec!["kvm-01".into(), "kvm-02".into()]
            }]
        );
    }

    #[test]
    fn tags_are_matched_without_greedy_dead_ends() {
        // Greedy would give the untagged need the only usb device first.
        let devices = [
            device("a", "arndale", &["usb"]),
            device("b", "arndale", &[]),
        ];
        let job = request(
            1,
            50,
            0,
            vec![need("arndale", &[]), need("arndale", &["usb"])],
        );
        let planned = plan(&[job], &devices, Policy::default());
        assert_eq!(planned[0].devices, ["b", "a"]);
    }

    #[test]
    fn priority_first_and_only_healthy_idle_devices() {
        let mut devices = vec![device("kvm-01", "kvm", &[]), device("kvm-02", "kvm", &[])];
        devices[1].health = DeviceHealth::Maintenance;
        let low = request(1, 10, 60, vec![need("kvm", &[])]);
        let high = request(2, 90, 0, vec![need("kvm", &[])]);
        let planned = plan(&[low, high], &devices, Policy::default());
        assert_eq!(
            planned,
            [Assignment {
                job_id: 2,
                devices: vec!["kvm-01".into()]
            }]
        );
    }

    #[test]
    fn a_starving_group_is_not_overtaken_by_small_jobs() {
        let mut devices = vec![device("kvm-01", "kvm", &[]), device("kvm-02", "kvm", &[])];
        devices[1].state = DeviceState::Running(7);
        let big = request(1, 50, 45, vec![need("kvm", &[]); 2]);
        let small = request(2, 50, 1, vec![need("kvm", &[])]);
        // Fresh, the big job would let the small one take the free device ...
        let fresh = Policy {
            starvation: Duration::from_secs(3600),
        };
        assert_eq!(
            plan(&[big.clone(), small.clone()], &devices, fresh).len(),
            1
        );
        // ... but once starving, the free device waits for it.
        assert!(plan(&[big.clone(), small], &devices, Policy::default()).is_empty());
        devices[1].state = DeviceState::Idle;
        assert_eq!(plan(&[big], &devices, Policy::default())[0].job_id, 1);
    }

    #[test]
    fn a_job_the_lab_can_never_serve_holds_no_device() {
        let devices = vec![device("kvm-01", "kvm", &[]), device("kvm-02", "kvm", &[])];
        // Starving, and needing more devices than the lab has.
        let impossible = request(1, 100, 45, vec![need("kvm", &[]); 256]);
        let normal = request(2, 50, 0, vec![need("kvm", &[]); 2]);
        let planned = plan(&[impossible.clone(), normal], &devices, Policy::default());
        assert_eq!(planned.len(), 1);
        assert_eq!(planned[0].job_id, 2);
        assert_eq!(
            shortfall(&impossible.needs, &devices).as_deref(),
            Some("the job needs 256 device(s) of device_type \"kvm\"; the lab has 2")
        );
        let tagged = vec![need("kvm", &["gpu"])];
        assert_eq!(
            shortfall(&tagged, &devices).as_deref(),
            Some("the job needs 1 device(s) of device_type \"kvm\" with tags gpu; the lab has 0")
        );
        // Busy or broken devices come back; retired ones do not.
        let mut some_down = devices.clone();
        some_down[0].health = DeviceHealth::Bad;
        some_down[1].state = DeviceState::Running(3);
        assert_eq!(shortfall(&vec![need("kvm", &[]); 2], &some_down), None);
        some_down[0].health = DeviceHealth::Retired;
        assert!(shortfall(&vec![need("kvm", &[]); 2], &some_down).is_some());
    }

    #[test]
    fn a_target_gets_exactly_that_device_whatever_its_type() {
        let devices = vec![
            device("kvm-01", "kvm", &[]),
            device("panda-01", "panda", &[]),
            device("kvm-02", "kvm", &[]),
        ];
        let by_name = |hostname: &str, device_type: Option<&str>| Need {
            device_type: device_type.map(str::to_string),
            tags: BTreeSet::new(),
            hostname: Some(hostname.to_string()),
        };
        let job = request(1, 50, 0, vec![by_name("kvm-02", None)]);
        assert_eq!(
            plan(&[job], &devices, Policy::default())[0].devices,
            vec!["kvm-02".to_string()]
        );
        // Busy: the job waits for it rather than taking another of its type.
        let mut busy = devices.clone();
        busy[2].state = DeviceState::Running(7);
        let job = request(1, 50, 0, vec![by_name("kvm-02", None)]);
        assert!(plan(&[job], &busy, Policy::default()).is_empty());
        // A type that the named device does not have, or a name the lab lacks.
        assert_eq!(
            shortfall(&[by_name("kvm-02", Some("panda"))], &devices).as_deref(),
            Some(
                "the job needs 1 device(s) of device_type \"panda\" named \"kvm-02\"; the lab has 0"
            )
        );
        assert_eq!(
            shortfall(&[by_name("panda01", None)], &devices).as_deref(),
            Some("the job needs 1 device(s) of any device type named \"panda01\"; the lab has 0")
        );
    }

    #[test]
    fn when_no_device_is_left_a_later_job_waits_for_the_same_reason_alone_or_in_the_queue() {
        let mut devices = [
            device("kvm-01", "kvm", &[]),
            device("kvm-02", "kvm", &[]),
            device("panda-01", "panda", &[]),
            device("panda-02", "panda", &[]),
        ];
        devices[0].state = DeviceState::Running(7);
        devices[1].awaiting_check = true;
        devices[3].health = DeviceHealth::Maintenance;
        // Job 2 has starved: it holds every kvm it could use.
        let queue = [
            request(1, 50, 40, vec![need("panda", &[])]),
            request(2, 50, 60, vec![need("kvm", &[])]),
        ];
        let first = plan_explained(&queue, &devices, Policy::default());
        assert_eq!(first.assignments.len(), 1);
        assert!(!any_left_for_jobs(&devices, &first.assignments));
        // Had panda-01 been left free, a later job could have taken it.
        assert!(any_left_for_jobs(&devices, &[]));
        // The next pass sees panda-01 reserved; jobs 3 and 4 are new.
        devices[2].state = DeviceState::Reserved(1);
        let new = [
            request(3, 90, 0, vec![need("kvm", &[])]),
            request(4, 10, 0, vec![need("panda", &[])]),
        ];
        let alone = plan_explained(&new, &devices, Policy::default());
        let mut whole = vec![queue[1].clone()];
        whole.extend(new.iter().cloned());
        let in_queue = plan_explained(&whole, &devices, Policy::default());
        assert!(alone.assignments.is_empty() && in_queue.assignments.is_empty());
        assert_eq!(alone.waiting.as_slice(), &in_queue.waiting[1..]);
        assert_eq!(
            &*alone.waiting[0].1,
            "waiting for a free kvm: kvm-01 runs job 7, kvm-02 awaits its health check"
        );
    }
}
