//! The nodes of a vm_group job: who they are (ids as `lava-self` prints them), which
//! images each VM boots, and which test shells each node runs, all read from the typed
//! job before anything is started.

use std::borrow::Cow;

use crate::testdef;
use job_schemas::{Command, Job, Login, NodeKind, RoleSpec, TestShell, VmGroup, VmSpec};
use regex::Regex;
use url::Url;

/// One VM of the group.
#[derive(Debug, Clone)]
pub struct VmNode {
    /// Unique in the group: the role, or `role-N` (from 1) when the role has several.
    pub id: String,
    pub role: String,
    /// Its index among the group's VMs (its place on the group LAN).
    pub index: u8,
    pub spec: VmSpec,
    pub boot: VmBoot,
}

/// What a VM boots, as the job gives it.
pub type ImageUrls = lab::qemu_template::Images<Url>;

/// What a VM boots and how its console reaches a shell, as the job gives it.
#[derive(Debug, Clone, Default)]
pub struct VmBoot {
    pub images: ImageUrls,
    /// A root file system as a tar archive, booted as an initramfs.
    pub nfsrootfs: Option<Url>,
    /// Tar archives unpacked over the root file system, in order.
    pub overlays: Vec<Url>,
    pub login: Login,
    /// The boot action's `test_image_prompt`.
    pub test_image_prompt: Option<String>,
    /// `bootloadertype: "uefi"`: the device type's UEFI firmware, unless the job gives
    /// its own `firmware`.
    pub uefi: bool,
}

impl VmBoot {
    /// Whether the job deploys anything at all.
    pub fn deploys(&self) -> bool {
        !self.images.is_empty() || self.builds_initramfs()
    }

    /// Whether the VM's root file system is made here from tar archives.
    pub fn builds_initramfs(&self) -> bool {
        self.nfsrootfs.is_some() || !self.overlays.is_empty()
    }

    /// The console's login script, its prompts compiled (validation compiled them
    /// already, so an error here names a pattern a newer validation would refuse): the
    /// deploy's login keys, else the device type's default login (`lab_default`).
    pub fn console_login(
        &self,
        lab_default: Option<&hostctl::console::Login>,
    ) -> Result<Option<hostctl::console::Login>, regex::Error> {
        let (Some(prompt), Some(user)) = (&self.login.login_prompt, &self.login.username) else {
            return Ok(lab_default.cloned());
        };
        let password = match (&self.login.password_prompt, &self.login.password) {
            (Some(prompt), Some(password)) => Some((Regex::new(prompt)?, password.clone())),
            _ => None,
        };
        Ok(Some(hostctl::console::Login {
            login_prompt: Regex::new(prompt)?,
            username: user.clone(),
            password,
        }))
    }

    /// The shell prompt: the VM entry's `shell_prompt`, else the boot action's
    /// `test_image_prompt`, else `default` (the device type's).
    pub fn prompt(
        &self,
        shell_prompt: Option<&str>,
        default: &Regex,
    ) -> Result<Regex, regex::Error> {
        match shell_prompt.or(self.test_image_prompt.as_deref()) {
            Some(text) => Regex::new(text),
            None => Ok(default.clone()),
        }
    }
}

/// A vm_group job's nodes.
#[derive(Debug, Clone)]
pub struct GroupPlan {
    pub host_id: String,
    pub host_role: String,
    pub vms: Vec<VmNode>,
}

impl GroupPlan {
    /// The plan of a validated job: node ids, their uniqueness and the group's size
    /// were checked by validation (`job_schemas`), so nothing here can fail.
    pub fn new(job: &Job, group: &VmGroup) -> Self {
        let mut vms = Vec::new();
        for spec in &group.vms {
            let boot = boot_for(job, &spec.role, spec.image.as_ref());
            let role = RoleSpec {
                name: spec.role.clone(),
                device_type: spec.device_type.clone(),
                count: spec.count,
                kind: NodeKind::Vm,
            };
            for id in role.node_ids() {
                // At most MAX_VMS_PER_GROUP (250) VMs passed validation.
                let index = u8::try_from(vms.len()).unwrap_or(u8::MAX);
                vms.push(VmNode {
                    id,
                    role: spec.role.clone(),
                    index,
                    spec: spec.clone(),
                    boot: boot.clone(),
                });
            }
        }
        Self {
            host_id: group.host_role.clone(),
            host_role: group.host_role.clone(),
            vms,
        }
    }

    /// `(node id, role)` of every node, host first: the coordinator group.
    pub fn members(&self) -> Vec<(String, String)> {
        std::iter::once((self.host_id.clone(), self.host_role.clone()))
            .chain(self.vms.iter().map(|v| (v.id.clone(), v.role.clone())))
            .collect()
    }

    /// `lava-group`'s output: lines of `node<TAB>role`.
    pub fn group_listing(&self) -> String {
        self.members()
            .iter()
            .map(|(id, role)| format!("{id}\t{role}\n"))
            .collect()
    }
}

/// What a VM role boots: its deploy actions (the last deploy wins), else the `image`
/// of its vm_group entry; and its boot action's prompt.
pub fn boot_for(job: &Job, role: &str, spec_image: Option<&Url>) -> VmBoot {
    // A deploy without a role is every role's (a single-device job has no roles at
    // all), as validation counts it.
    boot_from(job.actions_for(role), spec_image)
}

/// What a vm_group's host boots: only the deploy and boot actions naming its role. A
/// deploy without a role is the VMs' (validation counts it as every VM's image), never
/// the host's.
pub fn host_boot(job: &Job, host_role: &str) -> VmBoot {
    let named = job
        .actions
        .iter()
        .filter(|a| a.role.as_deref() == Some(host_role));
    boot_from(named, None)
}

fn boot_from<'a>(
    actions: impl Iterator<Item = &'a job_schemas::Action>,
    spec_image: Option<&Url>,
) -> VmBoot {
    let mut boot = VmBoot::default();
    for action in actions {
        match &action.command {
            Command::DeployLinaroImage(deploy) => {
                boot.images = ImageUrls {
                    image: deploy.image.clone(),
                    ..ImageUrls::default()
                };
                boot.nfsrootfs = None;
                boot.overlays.clear();
                boot.login = deploy.login.clone();
                boot.uefi = deploy.uefi;
            }
            Command::DeployLinaroKernel(deploy) => {
                boot.images = ImageUrls {
                    kernel: deploy.kernel.clone(),
                    ramdisk: deploy.ramdisk.clone(),
                    dtb: deploy.dtb.clone(),
                    rootfs: deploy.rootfs.clone(),
                    firmware: deploy.firmware.clone(),
                    ..ImageUrls::default()
                };
                boot.nfsrootfs = deploy.nfsrootfs.clone();
                boot.overlays = deploy.overlays.clone();
                boot.login = deploy.login.clone();
                boot.uefi = deploy.uefi;
            }
            Command::BootLinaroImage(b) => boot.test_image_prompt = b.test_image_prompt.clone(),
            _ => {}
        }
    }
    if boot.images.is_empty() && boot.nfsrootfs.is_none() {
        boot.images.image = spec_image.cloned();
    }
    boot
}

/// The test shells a role runs, in job order, with their timeouts (seconds): its
/// `lava_test_shell` actions, and its `lava_command_run` actions as the shells that run
/// their commands (`testdef::command_run_shell`).
pub fn test_shells<'a>(job: &'a Job, role: &'a str) -> Vec<(Cow<'a, TestShell>, Option<u64>)> {
    job.actions_for(role)
        .filter_map(|a| match &a.command {
            Command::LavaTestShell(shell) => Some((Cow::Borrowed(shell), a.timeout_secs)),
            Command::LavaCommandRun(run) => {
                Some((Cow::Owned(testdef::command_run_shell(run)), a.timeout_secs))
            }
            _ => None,
        })
        .collect()
}
