//! What validation needs to know about the lab: its device types, limits and file roots.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// What a device type can be used for in a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceTypeClass {
    /// A virtual machine type (`kvm`, `kvm-arm` ...): a VM in a `vm_group`, or a
    /// stand-alone device the dispatcher launches itself.
    Virtual,
    /// A host device (board, qemu-host, ssh-host). `virtualization` says whether it can
    /// run VMs, i.e. whether it may be a `vm_group` host; `boots_job_images` whether the
    /// dispatcher boots it from images a job may give (a qemu-host), where a board or
    /// an ssh-host boots as its lab says.
    Host {
        virtualization: bool,
        boots_job_images: bool,
    },
}

/// The device types a lab knows, by name.
#[derive(Debug, Clone, Default)]
pub struct DeviceCatalog {
    types: BTreeMap<String, DeviceTypeClass>,
}

impl DeviceCatalog {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, name: impl Into<String>, class: DeviceTypeClass) {
        self.types.insert(name.into(), class);
    }

    pub fn class(&self, name: &str) -> Option<DeviceTypeClass> {
        self.types.get(name).copied()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.types.keys().map(String::as_str)
    }

    /// Names of the types of one kind, e.g. every virtual type.
    pub fn names_where(&self, keep: impl Fn(DeviceTypeClass) -> bool) -> Vec<&str> {
        self.types
            .iter()
            .filter(|(_, class)| keep(**class))
            .map(|(name, _)| name.as_str())
            .collect()
    }
}

/// Configurable sizes. The defaults suit a small lab; a lab admin may raise them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest `count` for one role.
    pub max_count: u64,
    /// Largest number of nodes (role instances) in one job.
    pub max_group_size: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_count: 64,
            max_group_size: 256,
        }
    }
}

/// Everything [`crate::validate_str`] checks a job against besides the schema.
#[derive(Debug, Clone)]
pub struct ValidationContext {
    pub catalog: DeviceCatalog,
    pub limits: Limits,
    /// `file://` URLs must name a path under one of these directories. Empty: no
    /// `file://` URL is allowed.
    pub file_roots: Vec<PathBuf>,
}

impl ValidationContext {
    pub fn new(catalog: DeviceCatalog) -> Self {
        Self {
            catalog,
            limits: Limits::default(),
            file_roots: vec![PathBuf::from("/")],
        }
    }
}
