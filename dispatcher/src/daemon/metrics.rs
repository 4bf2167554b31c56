//! The daemon's Prometheus metrics (`GET /metrics`), kept and encoded by
//! `prometheus-client` in the OpenMetrics text format.
//!
//! Two kinds: histograms observed as things happen (how long jobs ran, how long they
//! waited for devices, per device type), and gauges set from the database when scraped
//! (jobs by state, devices by state and health, each device's health), so a scrape
//! shows what is true now even across restarts.

use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::service::Metrics;

/// The content type of [`LabMetrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every health a device can have: each device has a sample per health, 1 for its own.
const HEALTHS: [&str; 5] = ["good", "unknown", "bad", "maintenance", "retired"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobEnd {
    device_type: String,
    health: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeviceType {
    device_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct State {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HealthOf {
    health: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateAndHealth {
    state: String,
    health: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeviceHealth {
    device: String,
    device_type: String,
    health: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// The registry and every metric in it.
pub struct LabMetrics {
    registry: Registry,
    job_duration: Histograms<JobEnd>,
    queue_wait: Histograms<DeviceType>,
    jobs: Family<State, Gauge>,
    finished: Family<HealthOf, Gauge>,
    queue_length: Gauge,
    devices: Family<StateAndHealth, Gauge>,
    device_health: Family<DeviceHealth, Gauge>,
    coordinator_groups: Gauge,
    coordinator_waiters: Gauge,
    transfer_bytes: Counter,
    /// One scrape at a time: a scrape clears and sets the gauges before encoding.
    scraping: Mutex<()>,
}

/// Job durations: 1 s to about 4.5 h, doubling.
fn job_buckets() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 15))
}

/// Waits for devices: 1 s to about 4.5 h, doubling.
fn wait_buckets() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 15))
}

impl LabMetrics {
    /// The metrics of a daemon; `embedded_coordinator`: its MultiNode groups are its
    /// own (a standalone coordinator's are not its to count).
    pub fn new(embedded_coordinator: bool) -> Self {
        let mut registry = Registry::with_prefix("dispatcher");
        let job_duration: Histograms<JobEnd> = Family::new_with_constructor(job_buckets);
        let queue_wait: Histograms<DeviceType> = Family::new_with_constructor(wait_buckets);
        let metrics = Self {
            job_duration,
            queue_wait,
            jobs: Family::default(),
            finished: Family::default(),
            queue_length: Gauge::default(),
            devices: Family::default(),
            device_health: Family::default(),
            coordinator_groups: Gauge::default(),
            coordinator_waiters: Gauge::default(),
            transfer_bytes: Counter::default(),
            scraping: Mutex::new(()),
            registry: Registry::default(),
        };
        registry.register_with_unit(
            "job_duration",
            "How long jobs ran, by device type they used and how they ended",
            prometheus_client::registry::Unit::Seconds,
            metrics.job_duration.clone(),
        );
        registry.register_with_unit(
            "queue_wait",
            "How long jobs waited for their devices, by device type",
            prometheus_client::registry::Unit::Seconds,
            metrics.queue_wait.clone(),
        );
        registry.register(
            "jobs",
            "Jobs in the database by state",
            metrics.jobs.clone(),
        );
        registry.register(
            "jobs_finished",
            "Finished jobs by health",
            metrics.finished.clone(),
        );
        registry.register(
            "queue_length",
            "Jobs waiting for devices",
            metrics.queue_length.clone(),
        );
        registry.register(
            "devices",
            "Devices by state and health",
            metrics.devices.clone(),
        );
        registry.register(
            "device_health",
            "Each device's health: 1 for the health it has, 0 for the others",
            metrics.device_health.clone(),
        );
        if embedded_coordinator {
            registry.register(
                "coordinator_groups",
                "MultiNode groups alive",
                metrics.coordinator_groups.clone(),
            );
            registry.register(
                "coordinator_waiters",
                "MultiNode calls blocked now",
                metrics.coordinator_waiters.clone(),
            );
        }
        registry.register(
            "transfer_bytes",
            "Image and agent bytes sent to hosts",
            metrics.transfer_bytes.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }
}

/// Each type once: a job of two nodes on one type is one observation of that type.
fn distinct(device_types: &[String]) -> std::collections::BTreeSet<&String> {
    device_types.iter().collect()
}

impl LabMetrics {
    /// A job got its devices after waiting `waited`.
    pub fn job_started(&self, device_types: &[String], waited: Duration) {
        for device_type in distinct(device_types) {
            self.queue_wait
                .get_or_create(&DeviceType {
                    device_type: device_type.clone(),
                })
                .observe(waited.as_secs_f64());
        }
    }

    /// A job ended `health` after running `took`.
    pub fn job_ended(&self, device_types: &[String], health: &str, took: Duration) {
        for device_type in distinct(device_types) {
            self.job_duration
                .get_or_create(&JobEnd {
                    device_type: device_type.clone(),
                    health: health.to_string(),
                })
                .observe(took.as_secs_f64());
        }
    }

    /// Every metric as OpenMetrics text, the gauges set from `now` first.
    pub fn render(&self, now: &Metrics) -> String {
        let _one = self.scraping.lock();
        let set = |gauge: &Gauge, n: u64| {
            gauge.set(i64::try_from(n).unwrap_or(i64::MAX));
        };
        for (state, n) in &now.jobs_by_state {
            set(
                &self.jobs.get_or_create(&State {
                    state: state.to_string(),
                }),
                *n,
            );
        }
        for (health, n) in &now.finished_by_health {
            set(
                &self.finished.get_or_create(&HealthOf {
                    health: health.to_string(),
                }),
                *n,
            );
        }
        set(&self.queue_length, now.queued);
        // Devices come and go with the lab files: only what is true now is shown.
        self.devices.clear();
        for ((state, health), n) in &now.devices {
            set(
                &self.devices.get_or_create(&StateAndHealth {
                    state: state.clone(),
                    health: health.clone(),
                }),
                *n,
            );
        }
        self.device_health.clear();
        for (device, device_type, health) in &now.device_health {
            for name in HEALTHS {
                set(
                    &self.device_health.get_or_create(&DeviceHealth {
                        device: device.clone(),
                        device_type: device_type.clone(),
                        health: name.to_string(),
                    }),
                    u64::from(name == health),
                );
            }
        }
        if let Some((groups, waiters)) = now.coordinator {
            set(&self.coordinator_groups, groups as u64);
            set(&self.coordinator_waiters, waiters as u64);
        }
        // A counter only goes up: it takes what was sent since the last scrape.
        let sent = self.transfer_bytes.get();
        self.transfer_bytes
            .inc_by(now.transfer_bytes.saturating_sub(sent));
        let mut text = String::new();
        if let Err(err) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::warn!(%err, "cannot encode the metrics");
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn now() -> Metrics {
        Metrics {
            jobs_by_state: vec![("submitted", 2), ("finished", 3)],
            finished_by_health: vec![("complete", 2), ("incomplete", 1)],
            queued: 2,
            devices: BTreeMap::from([(("idle".to_string(), "good".to_string()), 1)]),
            device_health: vec![("kvm-01".into(), "kvm".into(), "good".into())],
            coordinator: Some((1, 0)),
            transfer_bytes: 4096,
        }
    }

    #[test]
    fn histograms_and_gauges_are_in_the_text() {
        let metrics = LabMetrics::new(true);
        // Two nodes on kvm: one job, observed once.
        metrics.job_started(&["kvm".into(), "kvm".into()], Duration::from_secs(3));
        metrics.job_ended(&["kvm".into()], "complete", Duration::from_secs(40));
        let text = metrics.render(&now());
        for line in [
            "dispatcher_job_duration_seconds_count{device_type=\"kvm\",health=\"complete\"} 1",
            "dispatcher_job_duration_seconds_bucket{le=\"64.0\",device_type=\"kvm\",health=\"complete\"} 1",
            "dispatcher_job_duration_seconds_bucket{le=\"32.0\",device_type=\"kvm\",health=\"complete\"} 0",
            "dispatcher_queue_wait_seconds_sum{device_type=\"kvm\"} 3.0",
            "dispatcher_queue_wait_seconds_count{device_type=\"kvm\"} 1",
            "dispatcher_jobs{state=\"finished\"} 3",
            "dispatcher_jobs_finished{health=\"incomplete\"} 1",
            "dispatcher_queue_length 2",
            "dispatcher_devices{state=\"idle\",health=\"good\"} 1",
            "dispatcher_device_health{device=\"kvm-01\",device_type=\"kvm\",health=\"good\"} 1",
            "dispatcher_device_health{device=\"kvm-01\",device_type=\"kvm\",health=\"bad\"} 0",
            "dispatcher_coordinator_groups 1",
            "dispatcher_transfer_bytes_total 4096",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn a_device_gone_from_the_lab_leaves_the_metrics_and_bytes_only_grow() {
        let metrics = LabMetrics::new(true);
        metrics.render(&now());
        let mut later = now();
        later.device_health.clear();
        later.devices.clear();
        later.transfer_bytes = 5000;
        let text = metrics.render(&later);
        assert!(!text.contains("kvm-01"), "{text}");
        assert!(
            text.contains("dispatcher_transfer_bytes_total 5000"),
            "{text}"
        );
    }
}
