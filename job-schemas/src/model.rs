//! The typed job: what the dispatcher works with once a job passed validation.
//!
//! Enums make the shapes LAVA allows the only ones representable: a job runs on a single
//! device, a device group or a VM group, never on two at once; an action is one of the
//! known commands with that command's parameters.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use url::Url;

use crate::diagnostic::Diagnostic;
use crate::semantic::DEFAULT_HOST_ROLE;

/// The role name of the one node of a single-device job (`device_type` jobs have no roles).
pub const SINGLE_DEVICE_ROLE: &str = "device";

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Job {
    pub name: Option<String>,
    /// Whole-job timeout in seconds.
    pub timeout_secs: u64,
    pub logging_level: LogLevel,
    pub priority: Priority,
    pub tags: Vec<String>,
    pub health_check: bool,
    pub metadata: serde_json::Map<String, Value>,
    pub topology: Topology,
    pub actions: Vec<Action>,
    /// Mailed when the job ends (LAVA v1 `notify`).
    pub notify: Vec<String>,
    /// Mailed when the job ends incomplete (LAVA v1 `notify_on_incomplete`).
    pub notify_on_incomplete: Vec<String>,
    /// HTTP requests made when the job ends.
    pub callbacks: Vec<Callback>,
}

/// An HTTP request made when a job ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Callback {
    pub url: String,
    #[serde(default)]
    pub method: CallbackMethod,
    /// Sent in `token_header`; the key of the body's HMAC.
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default = "default_token_header")]
    pub token_header: String,
    #[serde(default)]
    pub dataset: Dataset,
}

fn default_token_header() -> String {
    "Authorization".to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum CallbackMethod {
    #[default]
    #[serde(rename = "POST")]
    Post,
    #[serde(rename = "PUT")]
    Put,
}

/// What a callback's body holds besides the job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Dataset {
    #[default]
    State,
    Results,
    Log,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum LogLevel {
    Critical,
    Error,
    Warning,
    #[default]
    Info,
    Debug,
}

/// 0 (lowest) to 100 (highest); LAVA's `low`, `medium`, `high` are 0, 50, 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Priority(u8);

impl Priority {
    pub const LOW: Priority = Priority(0);
    pub const MEDIUM: Priority = Priority(50);
    pub const HIGH: Priority = Priority(100);

    pub fn value(self) -> u8 {
        self.0
    }
}

impl Default for Priority {
    fn default() -> Self {
        Self::MEDIUM
    }
}

/// Where a job runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Topology {
    /// One device: of a type, or a particular one (`target`, LAVA v1), or both.
    /// Validation guarantees at least one of the two.
    Single {
        device_type: Option<String>,
        target: Option<String>,
    },
    DeviceGroup {
        roles: Vec<GroupRole>,
    },
    VmGroup(VmGroup),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRole {
    pub role: String,
    pub count: u32,
    pub device_type: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub is_slave: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VmGroup {
    pub host_device_type: String,
    pub host_role: String,
    pub host_tags: Vec<String>,
    pub auto_start_vms: bool,
    pub vms: Vec<VmSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VmSpec {
    pub device_type: String,
    pub role: String,
    pub count: u32,
    pub image: Option<Url>,
    /// Commands run on the host: all but the last prepare, the last attaches to the
    /// console. Empty: launch from the device type's qemu template.
    pub launch_with: Vec<String>,
    /// Regular expression for the VM's shell prompt; `None`: the device type's default.
    pub shell_prompt: Option<String>,
    pub tags: Vec<String>,
}

/// What kind of node plays a role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    /// A device of the lab (single-device or device_group job).
    Device,
    /// The host device of a vm_group.
    VmHost,
    /// A virtual machine launched on the vm_group host.
    Vm,
}

/// One role of a job, in definition order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoleSpec {
    pub name: String,
    pub device_type: String,
    pub count: u32,
    pub kind: NodeKind,
}

impl RoleSpec {
    /// Its nodes' ids, as `lava-self` prints them: the role itself, or `role-N` (from 1)
    /// when the role has several nodes. Validation refuses a job where two ids meet.
    pub fn node_ids(&self) -> impl Iterator<Item = String> + '_ {
        (1..=self.count).map(move |n| {
            if self.count == 1 {
                self.name.clone()
            } else {
                format!("{}-{n}", self.name)
            }
        })
    }
}

/// One node of a job: an instance of a role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    /// Unique in the job (see [`RoleSpec::node_ids`]).
    pub node: String,
    pub role: String,
}

/// One action, routed to a role (`None`: every role).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Action {
    pub command: Command,
    pub role: Option<String>,
    pub timeout_secs: Option<u64>,
    pub metadata: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    DeployLinaroImage(DeployImage),
    DeployLinaroKernel(Box<DeployKernel>),
    BootLinaroImage(Boot),
    LavaTestShell(TestShell),
    /// Shell commands run in one shell on the node, each a test case (LAVA v1).
    LavaCommandRun(CommandRun),
    /// `submit_results` and `submit_results_on_host`: accepted for compatibility and
    /// ignored (with a warning at validation).
    SubmitResults,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeployImage {
    /// `None`: the job gave an empty string, a placeholder a lab refuses at submission
    /// (`runner::validation`), so a job that runs always has its image.
    pub image: Option<Url>,
    /// `bootloadertype: "uefi"`: the VM boots with its device type's UEFI firmware.
    pub uefi: bool,
    pub target_type: Option<TargetType>,
    pub login: Login,
}

/// `deploy_linaro_kernel`. Each URL is `None` when not given, or given as an empty
/// string (see [`DeployImage::image`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeployKernel {
    pub kernel: Option<Url>,
    pub ramdisk: Option<Url>,
    pub dtb: Option<Url>,
    pub rootfs: Option<Url>,
    /// A root file system as a tar archive, booted as an initramfs.
    pub nfsrootfs: Option<Url>,
    /// Tar archives unpacked over the root file system (ramdisk or nfsrootfs), in order.
    pub overlays: Vec<Url>,
    pub firmware: Option<Url>,
    /// `bootloadertype: "uefi"`: the device type's UEFI firmware, unless `firmware`.
    pub uefi: bool,
    pub target_type: Option<TargetType>,
    pub login: Login,
}

/// How the console logs in after boot (LAVA v1's keys of the deploy action). Empty:
/// the console is at a shell prompt by itself. Its `Debug` hides the password.
#[derive(Clone, Default, PartialEq, Eq, Serialize)]
pub struct Login {
    /// A regular expression; `None`: no login.
    pub login_prompt: Option<String>,
    pub username: Option<String>,
    pub password_prompt: Option<String>,
    /// Never serialized: the job's JSON as stored is the only copy.
    #[serde(skip_serializing)]
    pub password: Option<String>,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("login_prompt", &self.login_prompt)
            .field("username", &self.username)
            .field("password_prompt", &self.password_prompt)
            .field("password", &self.password.as_ref().map(|_| "****"))
            .finish()
    }
}

impl Login {
    pub fn is_empty(&self) -> bool {
        self.login_prompt.is_none()
    }
}

/// `boot_linaro_image`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Boot {
    /// A regular expression: the image's shell prompt, instead of the device type's.
    pub test_image_prompt: Option<String>,
}

/// The distribution a deployed image runs (LAVA v1's `target_type`): what the defaults
/// that depend on it are read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetType {
    Ubuntu,
    Debian,
    Fedora,
    /// OpenEmbedded.
    Oe,
    Android,
}

/// How packages are installed on a target (`install.deps` of a test definition).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageManager {
    Apt,
    Yum,
    Opkg,
}

impl PackageManager {
    /// The command that installs packages, non-interactively; the package names follow.
    pub fn install_command(self) -> &'static str {
        match self {
            PackageManager::Apt => "DEBIAN_FRONTEND=noninteractive apt-get install -y -q",
            PackageManager::Yum => "yum -e 0 -y -q install",
            PackageManager::Opkg => "opkg install",
        }
    }
}

impl TargetType {
    /// The package manager LAVA v1 used on this distribution; `None` on Android, which
    /// installs no packages.
    pub fn package_manager(self) -> Option<PackageManager> {
        match self {
            TargetType::Ubuntu | TargetType::Debian => Some(PackageManager::Apt),
            TargetType::Fedora => Some(PackageManager::Yum),
            TargetType::Oe => Some(PackageManager::Opkg),
            TargetType::Android => None,
        }
    }
}

/// `lava_command_run`: commands run in order in one shell (a `cd` or `export` carries
/// over), the whole list `iterations` times.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommandRun {
    pub commands: Vec<String>,
    /// A regular expression (named groups `test_case_id`, `result`...) matched at the
    /// start of each output line; `None`: LAVA's default `name : result` lines.
    pub parser: Option<String>,
    /// Words of the output mapped to results (`pass`, `fail`, `skip`, `unknown`).
    pub fixupdict: BTreeMap<String, String>,
    pub iterations: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TestShell {
    pub definitions: Vec<TestDefinitionSource>,
    /// The parts of every definition's install section left out (`skip_install`).
    pub skip_install: SkipInstall,
}

/// What LAVA's `skip_install` leaves out of a definition's install section; `all` is
/// every part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct SkipInstall {
    /// `git-repos` and `bzr-repos` (LAVA v1 called this part `repos`, later LAVA
    /// `git-repos`).
    pub repos: bool,
    pub deps: bool,
    pub steps: bool,
}

impl SkipInstall {
    /// From the schema-checked value: one part's name or a list of them.
    fn from_value(value: Option<&Value>) -> Self {
        let names: Vec<&str> = match value {
            Some(Value::String(name)) => vec![name.as_str()],
            Some(Value::Array(names)) => names.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let mut skip = SkipInstall::default();
        for name in names {
            match name {
                "all" => {
                    skip = SkipInstall {
                        repos: true,
                        deps: true,
                        steps: true,
                    }
                }
                "repos" | "git-repos" => skip.repos = true,
                "deps" => skip.deps = true,
                "steps" => skip.steps = true,
                _ => {}
            }
        }
        skip
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TestDefinitionSource {
    Url(Url),
    Inline {
        definition: Box<TestDefinition>,
        parameters: BTreeMap<String, String>,
    },
    /// A definition inside a repository or archive (`testdef_repos` with `git-repo`,
    /// `bzr-repo`, `tar-repo` or `url`): the whole tree goes to the node.
    Repository(RepoDefinition),
}

/// LAVA v1's default definition path inside a repository.
pub const DEFAULT_TESTDEF: &str = "lavatest.yaml";

/// The `bootloadertype` of a deploy that has an effect on a VM: boot its device type's
/// UEFI firmware, which runs the disk's own boot loader (or the job's kernel).
pub const UEFI: &str = "uefi";

/// A test definition that lives in a tree of files.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RepoDefinition {
    pub source: RepoSource,
    /// The definition's path inside the tree, relative to its top.
    pub testdef: String,
    /// The job's values over the definition's `params`.
    pub parameters: BTreeMap<String, String>,
}

/// Where a definition's tree comes from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RepoSource {
    /// `revision`: a branch, tag or commit; `None`: the repository's HEAD.
    Git { url: Url, revision: Option<String> },
    /// `url` as written (Bazaar also has `lp:` names); `revision`: a revision spec.
    Bzr {
        url: String,
        revision: Option<String>,
    },
    /// The archive's bytes (decoded from base64 at validation).
    Tar {
        #[serde(skip)]
        archive: Vec<u8>,
    },
    /// One definition file; the tree is that file alone.
    File { url: Url },
}

/// A test definition in LAVA's format (the same whether inline or fetched as YAML).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestDefinition {
    pub metadata: TestMetadata,
    #[serde(default, deserialize_with = "params_map")]
    pub params: BTreeMap<String, ScalarValue>,
    /// More defaults, over `params` (LAVA read a definition's `parameters` so).
    #[serde(default)]
    pub parameters: BTreeMap<String, ScalarValue>,
    #[serde(default)]
    pub install: Option<Install>,
    pub run: Steps,
    #[serde(default)]
    pub parse: Option<ParsePattern>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestMetadata {
    pub name: String,
    #[serde(default)]
    pub format: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Steps {
    #[serde(default)]
    pub steps: Vec<String>,
}

/// A definition's install section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Install {
    #[serde(default)]
    pub steps: Vec<String>,
    /// Package names for the target's package manager.
    #[serde(default)]
    pub deps: Vec<String>,
    #[serde(default, rename = "git-repos")]
    pub git_repos: Vec<GitRepo>,
    #[serde(default, rename = "bzr-repos")]
    pub bzr_repos: Vec<String>,
}

impl Install {
    /// Whether the section names repositories to fetch.
    pub fn has_repos(&self) -> bool {
        !self.git_repos.is_empty() || !self.bzr_repos.is_empty()
    }
}

/// One `install.git-repos` entry: a URL, or a URL with a branch and a destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum GitRepo {
    Url(String),
    Detailed {
        url: String,
        #[serde(default)]
        branch: Option<String>,
        #[serde(default)]
        destination: Option<String>,
        #[serde(default)]
        skip_by_default: Option<String>,
    },
}

impl GitRepo {
    pub fn url(&self) -> &str {
        match self {
            GitRepo::Url(url) | GitRepo::Detailed { url, .. } => url,
        }
    }
}

impl TestDefinition {
    /// The definition's default parameter values: `params`, then `parameters` over
    /// them.
    pub fn default_params(&self) -> BTreeMap<String, String> {
        self.params
            .iter()
            .chain(&self.parameters)
            .map(|(k, v)| (k.clone(), v.as_shell_text()))
            .collect()
    }
}

/// `params` as a map, or LAVA's early list of `NAME=value` strings read as one.
fn params_map<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, ScalarValue>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Params {
        Map(BTreeMap<String, ScalarValue>),
        List(Vec<String>),
    }
    Ok(match Params::deserialize(deserializer)? {
        Params::Map(map) => map,
        Params::List(items) => items
            .into_iter()
            .filter_map(|item| {
                let (name, value) = item.split_once('=')?;
                Some((name.to_string(), ScalarValue::Text(value.to_string())))
            })
            .collect(),
    })
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParsePattern {
    pub pattern: String,
    #[serde(default)]
    pub fixupdict: BTreeMap<String, String>,
}

/// A parameter value as test definitions allow it: string, number or boolean, kept as
/// the text the shell will see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ScalarValue {
    Text(String),
    Number(serde_json::Number),
    Flag(bool),
    /// A parameter without a value: the empty string, as LAVA set it.
    Null,
}

impl ScalarValue {
    pub fn as_shell_text(&self) -> String {
        match self {
            ScalarValue::Text(s) => s.clone(),
            ScalarValue::Number(n) => n.to_string(),
            ScalarValue::Flag(b) => b.to_string(),
            ScalarValue::Null => String::new(),
        }
    }
}

impl Job {
    /// The target type the deploy actions of `role` name (the last one that names one),
    /// as LAVA v1 read it from the deployment.
    pub fn target_type(&self, role: &str) -> Option<TargetType> {
        self.actions_for(role)
            .filter_map(|a| match &a.command {
                Command::DeployLinaroImage(d) => d.target_type,
                Command::DeployLinaroKernel(d) => d.target_type,
                _ => None,
            })
            .last()
    }

    /// Every role in definition order (a single-device job has the one role
    /// [`SINGLE_DEVICE_ROLE`]).
    pub fn roles(&self) -> Vec<RoleSpec> {
        match &self.topology {
            Topology::Single {
                device_type,
                target,
            } => vec![RoleSpec {
                name: SINGLE_DEVICE_ROLE.to_string(),
                // A job naming only its device runs on whatever type the lab gives it.
                device_type: device_type
                    .clone()
                    .or_else(|| target.as_ref().map(|t| format!("(the type of {t})")))
                    .unwrap_or_default(),
                count: 1,
                kind: NodeKind::Device,
            }],
            Topology::DeviceGroup { roles } => roles
                .iter()
                .map(|r| RoleSpec {
                    name: r.role.clone(),
                    device_type: r.device_type.clone(),
                    count: r.count,
                    kind: NodeKind::Device,
                })
                .collect(),
            Topology::VmGroup(group) => std::iter::once(RoleSpec {
                name: group.host_role.clone(),
                device_type: group.host_device_type.clone(),
                count: 1,
                kind: NodeKind::VmHost,
            })
            .chain(group.vms.iter().map(|vm| RoleSpec {
                name: vm.role.clone(),
                device_type: vm.device_type.clone(),
                count: vm.count,
                kind: NodeKind::Vm,
            }))
            .collect(),
        }
    }

    /// Every node of the job, in role order (a vm_group's host first, then its VMs in
    /// job order): the members of its MultiNode group.
    pub fn members(&self) -> Vec<Member> {
        self.roles()
            .iter()
            .flat_map(|r| {
                r.node_ids().map(|node| Member {
                    node,
                    role: r.name.clone(),
                })
            })
            .collect()
    }

    /// Number of nodes (role instances) the job needs.
    pub fn node_count(&self) -> u32 {
        self.roles().iter().map(|r| r.count).sum()
    }

    /// The actions one role runs, in job order: those naming it and those naming no role.
    pub fn actions_for<'a>(&'a self, role: &'a str) -> impl Iterator<Item = &'a Action> + 'a {
        self.actions
            .iter()
            .filter(move |a| a.role.as_deref().is_none_or(|r| r == role))
    }

    /// Builds the typed job from JSON that passed every check. A failure here is a bug
    /// in the checks, reported as a diagnostic rather than a panic.
    pub(crate) fn from_valid_value(value: &Value) -> Result<Job, InternalError> {
        let raw: RawJob = serde_json::from_value(value.clone()).map_err(internal)?;
        let topology = match (raw.device_type, raw.device_group, raw.vm_group) {
            (device_type, None, None) if device_type.is_some() || raw.target.is_some() => {
                Topology::Single {
                    device_type,
                    target: raw.target,
                }
            }
            (None, Some(roles), None) => Topology::DeviceGroup { roles },
            (None, None, Some(group)) => Topology::VmGroup(group.into_model()),
            _ => return Err(internal("topology not exactly one of three")),
        };
        let actions = raw
            .actions
            .into_iter()
            .map(RawAction::into_model)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Job {
            name: raw.job_name,
            timeout_secs: raw
                .timeout
                .unwrap_or(crate::semantic::DEFAULT_JOB_TIMEOUT_SECS),
            logging_level: raw.logging_level.unwrap_or_default(),
            priority: match raw.priority {
                None => Priority::default(),
                Some(RawPriority::Named(name)) => match name.as_str() {
                    "high" => Priority::HIGH,
                    "low" => Priority::LOW,
                    _ => Priority::MEDIUM,
                },
                Some(RawPriority::Number(n)) => Priority(n.min(100)),
            },
            tags: raw.tags,
            health_check: raw.health_check,
            metadata: raw.metadata,
            topology,
            actions,
            notify: raw.notify,
            notify_on_incomplete: raw.notify_on_incomplete,
            callbacks: raw.callbacks,
        })
    }
}

/// A validated job that still fails to build: a bug in the checks, never user error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InternalError(String);

impl InternalError {
    pub(crate) fn into_diagnostic(self) -> Diagnostic {
        Diagnostic::error(
            "",
            format!("internal error building the validated job: {}", self.0),
        )
        .hint("this is a bug in the dispatcher; please report it with the job")
    }
}

fn internal(err: impl std::fmt::Display) -> InternalError {
    InternalError(err.to_string())
}

#[derive(Deserialize)]
struct RawJob {
    job_name: Option<String>,
    timeout: Option<u64>,
    logging_level: Option<LogLevel>,
    priority: Option<RawPriority>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    health_check: bool,
    #[serde(default)]
    metadata: serde_json::Map<String, Value>,
    #[serde(default)]
    notify: Vec<String>,
    #[serde(default)]
    notify_on_incomplete: Vec<String>,
    #[serde(default)]
    callbacks: Vec<Callback>,
    device_type: Option<String>,
    target: Option<String>,
    device_group: Option<Vec<GroupRole>>,
    vm_group: Option<RawVmGroup>,
    actions: Vec<RawAction>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawPriority {
    Named(String),
    Number(u8),
}

#[derive(Deserialize)]
struct RawVmGroup {
    host: RawHost,
    auto_start_vms: Option<bool>,
    vms: Vec<RawVm>,
}

#[derive(Deserialize)]
struct RawHost {
    device_type: String,
    role: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
}

#[derive(Deserialize)]
struct RawVm {
    device_type: String,
    role: String,
    count: Option<u32>,
    image: Option<Url>,
    launch_with: Option<RawLaunchWith>,
    shell_prompt: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawLaunchWith {
    One(String),
    Many(Vec<String>),
}

impl RawVmGroup {
    fn into_model(self) -> VmGroup {
        VmGroup {
            host_device_type: self.host.device_type,
            host_role: self
                .host
                .role
                .unwrap_or_else(|| DEFAULT_HOST_ROLE.to_string()),
            host_tags: self.host.tags,
            auto_start_vms: self.auto_start_vms.unwrap_or(true),
            vms: self
                .vms
                .into_iter()
                .map(|vm| VmSpec {
                    device_type: vm.device_type,
                    role: vm.role,
                    count: vm.count.unwrap_or(1),
                    image: vm.image,
                    launch_with: match vm.launch_with {
                        None => Vec::new(),
                        Some(RawLaunchWith::One(command)) => vec![command],
                        Some(RawLaunchWith::Many(commands)) => commands,
                    },
                    shell_prompt: vm.shell_prompt,
                    tags: vm.tags,
                })
                .collect(),
        }
    }
}

#[derive(Deserialize)]
struct RawAction {
    command: String,
    #[serde(default)]
    parameters: serde_json::Map<String, Value>,
    metadata: Option<Value>,
}

#[derive(Deserialize)]
struct RawTestShell {
    #[serde(default)]
    testdef_urls: Vec<Url>,
    #[serde(default)]
    testdef_repos: Vec<RawRepo>,
    #[serde(default)]
    skip_install: Option<Value>,
}

#[derive(Deserialize)]
struct RawCommandRun {
    commands: Vec<String>,
    parser: Option<String>,
    #[serde(default)]
    fixupdict: Vec<String>,
    iterations: Option<u32>,
}

impl RawCommandRun {
    fn into_model(self) -> CommandRun {
        CommandRun {
            commands: self.commands,
            parser: self.parser,
            // The schema admits only WORD:RESULT entries; blanks around either are
            // LAVA's to strip.
            fixupdict: self
                .fixupdict
                .iter()
                .filter_map(|entry| entry.split_once(':'))
                .map(|(word, result)| (word.trim().to_string(), result.trim().to_string()))
                .collect(),
            iterations: self.iterations.unwrap_or(1),
        }
    }
}

#[derive(Deserialize)]
struct RawRepo {
    inline: Option<TestDefinition>,
    #[serde(rename = "git-repo")]
    git_repo: Option<Url>,
    #[serde(rename = "bzr-repo")]
    bzr_repo: Option<String>,
    #[serde(rename = "tar-repo")]
    tar_repo: Option<String>,
    url: Option<Url>,
    testdef: Option<String>,
    revision: Option<String>,
    #[serde(default)]
    parameters: BTreeMap<String, ScalarValue>,
}

impl RawRepo {
    fn into_model(self) -> Result<TestDefinitionSource, InternalError> {
        let parameters: BTreeMap<String, String> = self
            .parameters
            .into_iter()
            .map(|(k, v)| (k, v.as_shell_text()))
            .collect();
        if let Some(definition) = self.inline {
            return Ok(TestDefinitionSource::Inline {
                definition: Box::new(definition),
                parameters,
            });
        }
        let revision = self.revision;
        let (source, testdef) = if let Some(url) = self.git_repo {
            (RepoSource::Git { url, revision }, self.testdef)
        } else if let Some(url) = self.bzr_repo {
            (RepoSource::Bzr { url, revision }, self.testdef)
        } else if let Some(text) = self.tar_repo {
            let archive = crate::semantic::decode_base64(&text)
                .ok_or_else(|| internal("tar-repo is not base64"))?;
            (RepoSource::Tar { archive }, self.testdef)
        } else if let Some(url) = self.url {
            // LAVA v1: the definition is the downloaded file, named as the URL's last
            // segment.
            let name = url
                .path_segments()
                .and_then(|mut s| s.next_back())
                .filter(|s| !s.is_empty())
                .unwrap_or(DEFAULT_TESTDEF)
                .to_string();
            (RepoSource::File { url }, Some(name))
        } else {
            return Err(internal("testdef_repos entry with no source"));
        };
        Ok(TestDefinitionSource::Repository(RepoDefinition {
            source,
            testdef: testdef.unwrap_or_else(|| DEFAULT_TESTDEF.to_string()),
            parameters,
        }))
    }
}

/// A deploy action's parameters (both commands: validation refused the keys a command
/// does not take).
#[derive(Deserialize)]
struct RawDeploy {
    image: Option<String>,
    kernel: Option<String>,
    ramdisk: Option<String>,
    dtb: Option<String>,
    rootfs: Option<String>,
    nfsrootfs: Option<String>,
    #[serde(default)]
    overlays: Vec<String>,
    firmware: Option<String>,
    /// Only `"uefi"` has an effect (validation warns about the others).
    bootloadertype: Option<String>,
    target_type: Option<TargetType>,
    login_prompt: Option<String>,
    username: Option<String>,
    password_prompt: Option<String>,
    password: Option<String>,
}

impl RawDeploy {
    fn uefi(&self) -> bool {
        self.bootloadertype.as_deref() == Some(UEFI)
    }

    fn login(&self) -> Login {
        Login {
            login_prompt: self.login_prompt.clone(),
            username: self.username.clone(),
            password_prompt: self.password_prompt.clone(),
            password: self.password.clone(),
        }
    }
}

/// `boot_linaro_image`'s parameters; `boot_cmds` and `options` have no effect (the
/// validation warns) and are not read.
#[derive(Deserialize)]
struct RawBoot {
    test_image_prompt: Option<String>,
}

/// A URL validation checked, or `None` for the empty placeholder it warned about.
fn non_empty_url(text: &str) -> Option<Result<Url, InternalError>> {
    (!text.is_empty()).then(|| Url::parse(text).map_err(internal))
}

impl RawAction {
    fn into_model(self) -> Result<Action, InternalError> {
        let role = self
            .parameters
            .get("role")
            .and_then(Value::as_str)
            .map(str::to_string);
        let timeout_secs = self.parameters.get("timeout").and_then(Value::as_u64);
        let mut params = self.parameters;
        params.remove("role");
        params.remove("timeout");
        let params = Value::Object(params);
        let command = match self.command.as_str() {
            "deploy_linaro_image" => {
                let raw: RawDeploy = serde_json::from_value(params).map_err(internal)?;
                Command::DeployLinaroImage(DeployImage {
                    image: raw.image.as_deref().and_then(non_empty_url).transpose()?,
                    uefi: raw.uefi(),
                    target_type: raw.target_type,
                    login: raw.login(),
                })
            }
            "deploy_linaro_kernel" => {
                let raw: RawDeploy = serde_json::from_value(params).map_err(internal)?;
                let url = |u: &Option<String>| u.as_deref().and_then(non_empty_url).transpose();
                Command::DeployLinaroKernel(Box::new(DeployKernel {
                    kernel: url(&raw.kernel)?,
                    ramdisk: url(&raw.ramdisk)?,
                    dtb: url(&raw.dtb)?,
                    rootfs: url(&raw.rootfs)?,
                    nfsrootfs: url(&raw.nfsrootfs)?,
                    overlays: raw
                        .overlays
                        .iter()
                        .filter_map(|u| non_empty_url(u))
                        .collect::<Result<_, _>>()?,
                    firmware: url(&raw.firmware)?,
                    uefi: raw.uefi(),
                    target_type: raw.target_type,
                    login: raw.login(),
                }))
            }
            "boot_linaro_image" => {
                let raw: RawBoot = serde_json::from_value(params).map_err(internal)?;
                Command::BootLinaroImage(Boot {
                    test_image_prompt: raw.test_image_prompt,
                })
            }
            "lava_test_shell" => {
                let raw: RawTestShell = serde_json::from_value(params).map_err(internal)?;
                let definitions = raw
                    .testdef_urls
                    .into_iter()
                    .map(TestDefinitionSource::Url)
                    .map(Ok)
                    .chain(raw.testdef_repos.into_iter().map(RawRepo::into_model))
                    .collect::<Result<Vec<_>, _>>()?;
                Command::LavaTestShell(TestShell {
                    definitions,
                    skip_install: SkipInstall::from_value(raw.skip_install.as_ref()),
                })
            }
            "lava_command_run" => {
                let raw: RawCommandRun = serde_json::from_value(params).map_err(internal)?;
                Command::LavaCommandRun(raw.into_model())
            }
            "submit_results" | "submit_results_on_host" => Command::SubmitResults,
            other => return Err(internal(format!("unknown command {other}"))),
        };
        Ok(Action {
            command,
            role,
            timeout_secs,
            metadata: self.metadata,
        })
    }
}
