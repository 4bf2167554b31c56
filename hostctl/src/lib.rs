//! Reaching and driving devices: everything the dispatcher does to a machine.
//!
//! * [`ssh`]: SSH sessions and SFTP to host devices, with host-key checks;
//! * [`transfer`]: files onto a host through its SHA-256 cache;
//! * [`fetch`] and [`images`]: what a job may fetch and the local image store;
//! * [`initramfs`]: a root file system tarball and its overlays made into one initramfs;
//! * [`repos`]: test definition trees (git, Bazaar, tar) fetched and cached here;
//! * [`console`]: serial consoles, their logs and prompt waits;
//! * [`launch`]: the one qemu command line of a VM, its MAC addresses and group LAN;
//! * [`vm`] and [`local`]: qemu VMs launched here or on a host, QMP, local processes;
//! * [`host`]: host-device bring-up (power on, boot, wait for SSH).
//!
//! It knows devices and files, never jobs: nothing here reads a job or decides a
//! result.

pub mod console;
pub mod fetch;
pub mod host;
pub mod images;
pub mod initramfs;
pub mod launch;
pub mod local;
pub mod repos;
pub mod ssh;
pub mod transfer;
pub mod vm;
