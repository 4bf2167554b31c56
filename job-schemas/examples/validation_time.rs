//! Measures how long validation takes for jobs with thousands of problems (issue #13):
//! `cargo run --release -p job-schemas --example validation_time [SIZES...]`. Prints;
//! asserts nothing (the tests prove the work linear by counting it instead).

use std::time::Instant;

use job_schemas::validate_str;

#[path = "../tests/support/many_problems.rs"]
mod many_problems;

use many_problems::{context, errors_job, unknown_roles_job, warnings_job};

fn measure(name: &str, text: &str) {
    let ctx = context();
    let started = Instant::now();
    let outcome = validate_str(text, &ctx);
    let elapsed = started.elapsed();
    let (kind, shown) = match &outcome {
        Ok(validated) => ("valid", validated.warnings.len()),
        Err(report) => ("invalid", report.diagnostics().len()),
    };
    println!(
        "{name}: {} KB, {kind}, {shown} diagnostics shown, {:.3} s",
        text.len() / 1024,
        elapsed.as_secs_f64()
    );
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1000, 2000, 4000]
    } else {
        sizes
    };
    for &n in &sizes {
        measure(&format!("{n} warnings"), &warnings_job(n));
        measure(&format!("{n} errors"), &errors_job(n));
        measure(
            &format!("{n} unknown roles among {n} roles"),
            &unknown_roles_job(n, n),
        );
    }
}
