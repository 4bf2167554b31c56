//! The device types shipped in `device-types/`, compiled into the binary so the
//! dispatcher works with no configuration at all.

/// `(file name, contents)` of every shipped device type. A test checks this list
/// matches the directory.
pub const BUILTIN_DEVICE_TYPES: &[(&str, &str)] = &[
    (
        "arndale.toml",
        include_str!("../../device-types/arndale.toml"),
    ),
    ("kvm.toml", include_str!("../../device-types/kvm.toml")),
    (
        "kvm-aarch64.toml",
        include_str!("../../device-types/kvm-aarch64.toml"),
    ),
    (
        "kvm-arm.toml",
        include_str!("../../device-types/kvm-arm.toml"),
    ),
    (
        "qemu-host.toml",
        include_str!("../../device-types/qemu-host.toml"),
    ),
    (
        "ssh-host.toml",
        include_str!("../../device-types/ssh-host.toml"),
    ),
];
