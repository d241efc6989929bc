//! The criterion settings of every micro-benchmark in the workspace (each bench crate
//! includes this file with `#[path]`): short warm-up and measurement, so that
//! `cargo bench` of one crate takes seconds on a 2-core VM; command-line options
//! (`--quick`, a filter, …) still apply on top.

use std::time::Duration;

use criterion::Criterion;

pub fn criterion(sample_size: usize) -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(sample_size)
        .configure_from_args()
}
