//! Jobs with as many problems as asked for (issue #13), for the crate's tests and the
//! `validation_time` example: big jobs are made, not stored.

// Each user takes the jobs it needs.
#![allow(dead_code)]

use job_schemas::{DeviceCatalog, DeviceTypeClass, ValidationContext};

/// A lab with one VM type (`kvm`) and one VM host type (`qemu-host`).
pub fn context() -> ValidationContext {
    let mut catalog = DeviceCatalog::new();
    catalog.insert("kvm", DeviceTypeClass::Virtual);
    catalog.insert(
        "qemu-host",
        DeviceTypeClass::Host {
            virtualization: true,
            boots_job_images: false,
        },
    );
    ValidationContext::new(catalog)
}

/// A single-device job with `n` actions: `action(i)` is the i-th.
fn single_device_job(n: usize, action: impl Fn(usize) -> String) -> String {
    let actions: Vec<String> = (0..n).map(action).collect();
    format!(
        "{{\n  \"timeout\": 10,\n  \"device_type\": \"kvm\",\n  \"actions\": [\n    {}\n  ]\n}}\n",
        actions.join(",\n    ")
    )
}

/// Valid, with `n` warnings: each action's timeout is longer than the job's.
pub fn warnings_job(n: usize) -> String {
    single_device_job(n, |_| {
        r#"{"command": "boot_linaro_image", "parameters": {"timeout": 20}}"#.to_string()
    })
}

/// Invalid, with `n` errors: each action's timeout is 0.
pub fn errors_job(n: usize) -> String {
    single_device_job(n, |_| {
        r#"{"command": "boot_linaro_image", "parameters": {"timeout": 0}}"#.to_string()
    })
}

/// Invalid, with `n` warnings and then one error (in the last action).
pub fn warnings_then_an_error_job(n: usize) -> String {
    single_device_job(n + 1, |i| {
        let timeout = if i == n { 0 } else { 20 };
        format!(r#"{{"command": "boot_linaro_image", "parameters": {{"timeout": {timeout}}}}}"#)
    })
}

/// Invalid: a device_group of `roles` roles and `n` actions naming roles it does not
/// have, so that each error looks for a likely typo among the roles.
pub fn unknown_roles_job(roles: usize, n: usize) -> String {
    let group: Vec<String> = (0..roles)
        .map(|i| format!(r#"{{"role": "role{i}", "count": 1, "device_type": "kvm"}}"#))
        .collect();
    let actions: Vec<String> = (0..n)
        .map(|i| {
            format!(r#"{{"command": "boot_linaro_image", "parameters": {{"role": "other{i}"}}}}"#)
        })
        .collect();
    format!(
        "{{\n  \"timeout\": 10,\n  \"device_group\": [\n    {}\n  ],\n  \"actions\": [\n    {}\n  ]\n}}\n",
        group.join(",\n    "),
        actions.join(",\n    ")
    )
}

/// A vm_group job on a `qemu-host` whose VMs have these counts (`None`: no count).
pub fn vm_group_job(counts: &[Option<&str>]) -> String {
    let vms: Vec<String> = counts
        .iter()
        .enumerate()
        .map(|(i, count)| {
            let count = count.map_or(String::new(), |c| format!(r#", "count": {c}"#));
            format!(
                r#"{{"device_type": "kvm", "role": "vm{i}", "image": "file:///srv/vm.img"{count}}}"#
            )
        })
        .collect();
    format!(
        "{{\n  \"timeout\": 60,\n  \"vm_group\": {{\n    \"host\": {{\"device_type\": \"qemu-host\"}},\n    \"vms\": [\n      {}\n    ]\n  }},\n  \"actions\": [{{\"command\": \"boot_linaro_image\"}}]\n}}\n",
        vms.join(",\n      ")
    )
}
