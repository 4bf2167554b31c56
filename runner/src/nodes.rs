//! The nodes of a vm_group job: who they are (ids as `lava-self` prints them), which
//! images each VM boots, and which test shells each node runs, all read from the typed
//! job before anything is started.

use std::borrow::Cow;

use crate::testdef;
use job_schemas::{Command, Job, NodeKind, RoleSpec, TestShell, VmGroup, VmSpec};
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
    pub images: ImageUrls,
}

/// What a VM boots, as the job gives it.
pub type ImageUrls = lab::qemu_template::Images<Url>;

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
            let images = images_for(job, &spec.role, spec.image.as_ref());
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
                    images: images.clone(),
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

/// The images a VM role boots: its deploy actions (the last of each kind wins), else
/// the `image` of its vm_group entry.
pub fn images_for(job: &Job, role: &str, spec_image: Option<&Url>) -> ImageUrls {
    let mut images = ImageUrls::default();
    // A deploy without a role is every role's (a single-device job has no roles at
    // all), as validation counts it.
    for action in job.actions_for(role) {
        match &action.command {
            Command::DeployLinaroImage(deploy) => images.image = Some(deploy.image.clone()),
            Command::DeployLinaroKernel(deploy) => {
                images.kernel = Some(deploy.kernel.clone());
                images.ramdisk = deploy.ramdisk.clone();
                images.dtb = deploy.dtb.clone();
                images.rootfs = deploy.rootfs.clone();
            }
            _ => {}
        }
    }
    if images.is_empty() {
        images.image = spec_image.cloned();
    }
    images
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
