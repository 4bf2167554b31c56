//! The keys LAVA v1 users wrote: `lava_command_run`, `submit_results_on_host`, a
//! `target` device, unknown top-level keys, `target_type`, and a v2 YAML job refused
//! as such.

use serde_json::json;

use crate::{
    Command, CommandRun, DeviceCatalog, DeviceTypeClass, PackageManager, Report, Severity,
    TargetType, Topology, Validated, ValidationContext, validate_str,
};

/// A lab with one VM type, `kvm`.
fn context() -> ValidationContext {
    let mut catalog = DeviceCatalog::new();
    catalog.insert("kvm", DeviceTypeClass::Virtual);
    ValidationContext::new(catalog)
}

fn check(job: &serde_json::Value) -> Result<Validated, Report> {
    validate_str(
        &serde_json::to_string_pretty(job).unwrap_or_default(),
        &context(),
    )
}

fn valid(job: &serde_json::Value) -> Validated {
    check(job).unwrap_or_else(|r| panic!("{}", r.render("job")))
}

fn errors(job: &serde_json::Value) -> Vec<(String, String)> {
    match check(job) {
        Ok(_) => panic!("validated but should not: {job}"),
        Err(report) => report
            .errors()
            .map(|d| (d.pointer.clone(), d.message.clone()))
            .collect(),
    }
}

fn warnings(validated: &Validated) -> Vec<(String, String, Option<String>)> {
    validated
        .warnings
        .iter()
        .filter(|d| d.severity == Severity::Warning)
        .map(|d| (d.pointer.clone(), d.message.clone(), d.hint.clone()))
        .collect()
}

fn kvm_job(actions: serde_json::Value) -> serde_json::Value {
    json!({"job_name": "v1", "timeout": 900, "device_type": "kvm", "actions": actions})
}

#[test]
fn lava_command_run_is_typed_with_its_defaults() {
    let job = kvm_job(json!([
        {"command": "deploy_linaro_image", "parameters": {"image": "https://example.org/i.img"}},
        {"command": "lava_command_run", "parameters": {"commands": ["cd /tmp", "true"]}},
        {"command": "lava_command_run", "parameters": {
            "commands": ["./run.sh"], "parser": "^(?P<test_case_id>\\S+) (?P<result>\\w+)",
            "fixupdict": ["PASS:pass", " FAIL : fail"], "iterations": 3, "timeout": 60}}
    ]));
    let validated = valid(&job);
    let runs: Vec<(&CommandRun, Option<u64>)> = validated
        .job
        .actions
        .iter()
        .filter_map(|a| match &a.command {
            Command::LavaCommandRun(run) => Some((run, a.timeout_secs)),
            _ => None,
        })
        .collect();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0].0.commands, ["cd /tmp", "true"]);
    assert_eq!(
        (runs[0].0.iterations, runs[0].0.parser.as_deref()),
        (1, None)
    );
    assert_eq!(runs[1].0.iterations, 3);
    assert_eq!(runs[1].1, Some(60));
    assert_eq!(
        runs[1].0.fixupdict.get("FAIL").map(String::as_str),
        Some("fail")
    );
}

#[test]
fn lava_command_run_mistakes_are_refused_where_they_are() {
    let job = kvm_job(json!([
        {"command": "lava_command_run", "parameters": {"commands": []}},
        {"command": "lava_command_run", "parameters": {"commands": ["x"], "parser": "(?P<result>"}},
        {"command": "lava_command_run", "parameters": {"commands": ["x"], "fixupdict": ["PASS=pass"]}},
        {"command": "lava_command_run", "parameters": {"commands": ["x"], "iterations": 1e30}},
        {"command": "lava_command_run", "parameters": {"commands": ["x"], "comands": ["y"]}},
        {"command": "lava_command_run", "parameters": {}}
    ]));
    let pointers: Vec<String> = errors(&job).into_iter().map(|(p, _)| p).collect();
    for expected in [
        "/actions/0/parameters/commands",
        "/actions/1/parameters/parser",
        "/actions/2/parameters/fixupdict/0",
        "/actions/3/parameters/iterations",
        "/actions/4/parameters/comands",
        "/actions/5/parameters/commands",
    ] {
        assert!(
            pointers.iter().any(|p| p == expected),
            "{expected} not in {pointers:?}"
        );
    }
}

#[test]
fn submit_results_on_host_is_accepted_and_ignored_with_a_warning() {
    let job = kvm_job(json!([
        {"command": "deploy_linaro_image", "parameters": {"image": "https://example.org/i.img"}},
        {"command": "submit_results_on_host", "parameters": {
            "server": "http://localhost/RPC2/", "stream": "/anonymous/x/", "timeout": "any"}}
    ]));
    let validated = valid(&job);
    assert_eq!(validated.job.actions[1].command, Command::SubmitResults);
    let found = warnings(&validated);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "/actions/1/command");
    assert_eq!(found[0].1, "submit_results_on_host is ignored");
}

#[test]
fn a_target_alone_names_the_device_and_is_single_device() {
    let job = json!({"timeout": 900, "target": "kvm01", "actions": [
        {"command": "deploy_linaro_image", "parameters": {"image": "https://example.org/i.img"}}]});
    assert_eq!(
        valid(&job).job.topology,
        Topology::Single {
            device_type: None,
            target: Some("kvm01".into())
        }
    );
    let both = json!({"timeout": 900, "device_type": "kvm", "target": "kvm01", "actions": [
        {"command": "boot_linaro_image"}]});
    assert_eq!(
        valid(&both).job.topology,
        Topology::Single {
            device_type: Some("kvm".into()),
            target: Some("kvm01".into())
        }
    );
    // A target has no roles to route actions to, like any single-device job.
    let with_role = json!({"timeout": 900, "target": "kvm01", "actions": [
        {"command": "boot_linaro_image", "parameters": {"role": "x"}}]});
    assert_eq!(
        errors(&with_role),
        [(
            "/actions/0/parameters/role".to_string(),
            "a single-device job has no roles".to_string()
        )]
    );
    let nowhere = json!({"timeout": 900, "actions": [{"command": "boot_linaro_image"}]});
    assert_eq!(errors(&nowhere)[0].0, "");
}

#[test]
fn unknown_top_level_keys_are_warnings_naming_them_with_typo_hints() {
    let mut job = kvm_job(json!([{"command": "boot_linaro_image"}]));
    job["health-check"] = json!(true);
    job["image_type"] = json!("android");
    job["job_nmae"] = json!("typo");
    let validated = valid(&job);
    let found = warnings(&validated);
    let hint_of = |key: &str| {
        found
            .iter()
            .find(|(p, m, _)| p == &format!("/{key}") && m.contains(&format!("\"{key}\"")))
            .unwrap_or_else(|| panic!("no warning for {key}: {found:?}"))
            .2
            .clone()
            .unwrap_or_default()
    };
    assert!(hint_of("health-check").contains("did you mean \"health_check\"?"));
    assert!(hint_of("job_nmae").contains("did you mean \"job_name\"?"));
    assert!(!hint_of("image_type").contains("did you mean"));
    // LAVA's reserved keys stay errors.
    let mut reserved = kvm_job(json!([{"command": "boot_linaro_image"}]));
    reserved["target_group"] = json!("g");
    assert_eq!(errors(&reserved)[0].0, "/target_group");
}

#[test]
fn target_type_is_typed_and_gives_the_package_manager() {
    let job = kvm_job(json!([
        {"command": "deploy_linaro_kernel", "parameters": {
            "kernel": "https://example.org/vmlinuz", "target_type": "ubuntu"}},
        {"command": "boot_linaro_image"}
    ]));
    let validated = valid(&job);
    let target_type = validated.job.target_type(crate::SINGLE_DEVICE_ROLE);
    assert_eq!(target_type, Some(TargetType::Ubuntu));
    assert_eq!(
        target_type.and_then(TargetType::package_manager),
        Some(PackageManager::Apt)
    );
    assert_eq!(TargetType::Oe.package_manager(), Some(PackageManager::Opkg));
    assert_eq!(TargetType::Android.package_manager(), None);
    let wrong = kvm_job(json!([{"command": "deploy_linaro_image", "parameters": {
        "image": "https://example.org/i.img", "target_type": "windows"}}]));
    assert_eq!(errors(&wrong)[0].0, "/actions/0/parameters/target_type");
}

#[test]
fn a_lava_v2_yaml_job_is_refused_in_one_line_saying_so() {
    for text in [
        "device_type: qemu\njob_name: x\ntimeouts:\n  job:\n    minutes: 5\nactions: []\n",
        "# a comment\n---\njob_name: kvm\ndevice_type: kvm\n",
    ] {
        let Err(report) = validate_str(text, &context()) else {
            panic!("a YAML job validated");
        };
        let messages: Vec<&str> = report
            .diagnostics()
            .iter()
            .map(|d| d.message.as_str())
            .collect();
        assert_eq!(
            messages,
            ["this is a LAVA v2 YAML job; this dispatcher reads LAVA v1 JSON jobs"]
        );
    }
    // Other text that is not JSON is still a syntax error.
    let Err(report) = validate_str("hello: there\n", &context()) else {
        panic!("not JSON, yet validated");
    };
    assert!(report.errors().all(|d| !d.message.contains("LAVA v2")));
}

#[test]
fn the_known_top_level_keys_are_the_schemas() {
    let schema: serde_json::Value = serde_json::from_str(crate::JOB_SCHEMA).unwrap_or_default();
    let mut in_schema: Vec<&str> = schema["properties"]
        .as_object()
        .map(|p| p.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let mut known = crate::semantic::KNOWN_KEYS.to_vec();
    in_schema.sort_unstable();
    known.sort_unstable();
    assert_eq!(
        in_schema, known,
        "a key the schema describes would be warned about"
    );
}

/// A vm_group on a board type (`arndale`, a host) with one `kvm` guest.
fn group_job(actions: serde_json::Value) -> serde_json::Value {
    json!({"job_name": "g", "timeout": 900, "vm_group": {
        "host": {"device_type": "arndale", "role": "host"},
        "vms": [{"device_type": "kvm", "role": "guest"}]},
        "actions": actions})
}

fn group_context() -> ValidationContext {
    let mut ctx = context();
    ctx.catalog.insert(
        "arndale",
        DeviceTypeClass::Host {
            virtualization: true,
            boots_job_images: false,
        },
    );
    ctx
}

#[test]
fn a_kernel_deploy_types_nfsrootfs_overlays_firmware_login_and_the_boot_prompt() {
    let job = kvm_job(json!([
        {"command": "deploy_linaro_kernel", "parameters": {
            "kernel": "https://example.org/vmlinuz",
            "nfsrootfs": "https://example.org/rootfs.tar.xz",
            "overlays": ["https://example.org/modules.tar.xz", "https://example.org/extra.tar.gz"],
            "firmware": "https://example.org/QEMU_EFI.fd.gz",
            "login_prompt": "login:", "username": "root",
            "password_prompt": "Password:", "password": "s3cret"}},
        {"command": "boot_linaro_image", "parameters": {"test_image_prompt": "root@debian:~#"}}
    ]));
    let validated = valid(&job);
    let Command::DeployLinaroKernel(deploy) = &validated.job.actions[0].command else {
        panic!("not a kernel deploy");
    };
    assert_eq!(
        deploy.nfsrootfs.as_ref().map(url::Url::as_str),
        Some("https://example.org/rootfs.tar.xz")
    );
    assert_eq!(deploy.overlays.len(), 2);
    assert!(deploy.firmware.is_some());
    assert_eq!(deploy.login.login_prompt.as_deref(), Some("login:"));
    assert_eq!(deploy.login.password.as_deref(), Some("s3cret"));
    // The typed job is what the API shows: never the password.
    let shown = serde_json::to_string(&validated.job).unwrap_or_default();
    assert!(!shown.contains("s3cret"), "{shown}");
    let debug = format!("{:?}", validated.job);
    assert!(!debug.contains("s3cret"), "{debug}");
    let Command::BootLinaroImage(boot) = &validated.job.actions[1].command else {
        panic!("not a boot");
    };
    assert_eq!(boot.test_image_prompt.as_deref(), Some("root@debian:~#"));
}

#[test]
fn root_file_systems_that_cannot_go_together_are_refused_where_they_are() {
    let both = kvm_job(json!([{"command": "deploy_linaro_kernel", "parameters": {
        "kernel": "https://example.org/k", "ramdisk": "https://example.org/r.cpio.gz",
        "nfsrootfs": "https://example.org/rootfs.tar.gz"}}]));
    assert_eq!(
        errors(&both),
        [(
            "/actions/0/parameters/ramdisk".to_string(),
            "ramdisk with nfsrootfs: two root file systems".to_string()
        )]
    );
    let nowhere = kvm_job(json!([{"command": "deploy_linaro_kernel", "parameters": {
        "kernel": "https://example.org/k", "rootfs": "https://example.org/disk.img",
        "overlays": ["https://example.org/modules.tar.xz"]}}]));
    assert_eq!(
        errors(&nowhere)[0].0,
        "/actions/0/parameters/overlays",
        "overlays over a disk image"
    );
    // Over a ramdisk they are fine.
    valid(&kvm_job(
        json!([{"command": "deploy_linaro_kernel", "parameters": {
        "kernel": "https://example.org/k", "ramdisk": "https://example.org/r.cpio.gz",
        "overlays": ["https://example.org/modules.tar.xz"]}}]),
    ));
}

#[test]
fn login_keys_name_the_one_they_need_and_prompts_must_compile() {
    let missing = kvm_job(json!([{"command": "deploy_linaro_image", "parameters": {
        "image": "https://example.org/i.img", "login_prompt": "login:",
        "password": "x"}}]));
    let found = errors(&missing);
    assert!(
        found.contains(&(
            "/actions/0/parameters/login_prompt".into(),
            "login_prompt without username".into()
        )),
        "{found:?}"
    );
    assert!(
        found.contains(&(
            "/actions/0/parameters/password".into(),
            "password without password_prompt".into()
        )),
        "{found:?}"
    );
    let bad = kvm_job(json!([
        {"command": "deploy_linaro_image", "parameters": {"image": "https://example.org/i.img"}},
        {"command": "boot_linaro_image", "parameters": {"test_image_prompt": "root@(x"}}]));
    assert_eq!(
        errors(&bad)[0],
        (
            "/actions/1/parameters/test_image_prompt".into(),
            "test_image_prompt is not a valid regular expression".into()
        )
    );
}

#[test]
fn bootloadertype_uefi_asks_for_the_device_types_uefi_firmware_without_a_warning() {
    let job = kvm_job(json!([
        {"command": "deploy_linaro_image", "parameters": {
            "image": "https://example.org/debian.qcow2", "bootloadertype": "uefi"}},
        {"command": "boot_linaro_image"}
    ]));
    let validated = valid(&job);
    assert_eq!(warnings(&validated), []);
    let Command::DeployLinaroImage(deploy) = &validated.job.actions[0].command else {
        panic!("not an image deploy");
    };
    assert!(deploy.uefi);
    let job = kvm_job(json!([
        {"command": "deploy_linaro_kernel", "parameters": {
            "kernel": "https://example.org/k", "bootloadertype": "u_boot"}}
    ]));
    let validated = valid(&job);
    let Command::DeployLinaroKernel(deploy) = &validated.job.actions[0].command else {
        panic!("not a kernel deploy");
    };
    assert!(!deploy.uefi);
}

#[test]
fn keys_with_no_effect_are_warnings_that_say_why() {
    let job = kvm_job(json!([
        {"command": "deploy_linaro_kernel", "parameters": {
            "kernel": "https://example.org/k", "bootloadertype": "u_boot"}},
        {"command": "boot_linaro_image", "parameters": {
            "boot_cmds": ["setenv bootargs x"], "options": ["boot_cmds=boot_cmds_oe"]}}
    ]));
    let found = warnings(&valid(&job));
    let at: Vec<&str> = found.iter().map(|(p, _, _)| p.as_str()).collect();
    assert_eq!(
        at,
        [
            "/actions/0/parameters/bootloadertype",
            "/actions/1/parameters/boot_cmds",
            "/actions/1/parameters/options"
        ]
    );
    assert!(
        found
            .iter()
            .all(|(_, m, hint)| m.ends_with("has no effect") && hint.is_some())
    );
}

#[test]
fn a_deploy_for_a_host_device_is_a_warning_naming_what_is_not_applied() {
    let job = group_job(json!([
        {"command": "deploy_linaro_kernel", "parameters": {"role": "host",
            "kernel": "https://example.org/k", "nfsrootfs": "https://example.org/r.tar.gz",
            "overlays": ["https://example.org/m.tar.xz"], "bootloadertype": "u_boot"}},
        {"command": "deploy_linaro_kernel", "parameters": {"role": "guest",
            "kernel": "https://example.org/k", "ramdisk": "https://example.org/r.cpio.gz"}},
        {"command": "boot_linaro_image", "parameters": {"role": "host"}}
    ]));
    let text = serde_json::to_string(&job).unwrap_or_default();
    let validated =
        validate_str(&text, &group_context()).unwrap_or_else(|r| panic!("{}", r.render("job")));
    let found = warnings(&validated);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "/actions/0");
    assert_eq!(
        found[0].1,
        "deploy_linaro_kernel is not applied to a host device"
    );
    let detail = &validated.warnings[0];
    assert_eq!(
        detail.found.as_deref(),
        Some("parameters bootloadertype, kernel, nfsrootfs, overlays")
    );
}

#[test]
fn empty_urls_and_a_missing_timeout_are_warnings_offline() {
    let mut job = kvm_job(json!([{"command": "deploy_linaro_kernel", "parameters": {
        "kernel": "", "ramdisk": ""}}]));
    job.as_object_mut().map(|o| o.remove("timeout"));
    let validated = valid(&job);
    let at: Vec<String> = warnings(&validated)
        .into_iter()
        .map(|(p, _, _)| p)
        .collect();
    assert_eq!(
        at,
        [
            "/timeout",
            "/actions/0/parameters/kernel",
            "/actions/0/parameters/ramdisk"
        ]
    );
    assert_eq!(validated.job.timeout_secs, crate::DEFAULT_JOB_TIMEOUT_SECS);
    let Command::DeployLinaroKernel(deploy) = &validated.job.actions[0].command else {
        panic!("not a kernel deploy");
    };
    assert_eq!((&deploy.kernel, &deploy.ramdisk), (&None, &None));
}

#[test]
fn a_qemu_host_takes_a_deploy_as_a_vm_does() {
    let mut ctx = group_context();
    ctx.catalog.insert(
        "qemu-host",
        DeviceTypeClass::Host {
            virtualization: true,
            boots_job_images: true,
        },
    );
    let mut job = group_job(json!([
        {"command": "deploy_linaro_kernel", "parameters": {"role": "host",
            "kernel": "https://example.org/k", "nfsrootfs": "https://example.org/r.tar.gz"}},
        {"command": "deploy_linaro_kernel", "parameters": {"role": "guest",
            "kernel": "https://example.org/k", "ramdisk": "https://example.org/r.cpio.gz"}}
    ]));
    job["vm_group"]["host"]["device_type"] = json!("qemu-host");
    let text = serde_json::to_string(&job).unwrap_or_default();
    let validated = validate_str(&text, &ctx).unwrap_or_else(|r| panic!("{}", r.render("job")));
    assert_eq!(warnings(&validated), []);
    // And its deploy is checked as a VM's.
    job["actions"][0]["parameters"]["rootfs"] = json!("https://example.org/disk.img");
    let text = serde_json::to_string(&job).unwrap_or_default();
    let Err(report) = validate_str(&text, &ctx) else {
        panic!("nfsrootfs with rootfs validated");
    };
    assert_eq!(
        report
            .errors()
            .map(|d| d.pointer.as_str())
            .collect::<Vec<_>>(),
        ["/actions/0/parameters/rootfs"]
    );
}
