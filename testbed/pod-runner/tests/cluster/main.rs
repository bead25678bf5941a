//! End-to-end tests of the local cluster with the real kubectl: they run on the
//! cluster named by `FLASHSALE_CLUSTER` when it is up, else on one they start and
//! take down. A plain `main` (harness = false) so one cluster serves every test and
//! is stopped even when a test fails.
//!
//!   cargo test -p pod-runner --test cluster [-- FILTER]

mod harness;
mod teardown;
mod workloads;

use std::process::ExitCode;
use std::time::Instant;

use harness::{Cluster, TestResult};

type Test = fn(&Cluster) -> TestResult;

const TESTS: &[(&str, Test)] = &[
    (
        "deployment_behind_a_service",
        workloads::deployment_behind_a_service,
    ),
    (
        "statefulset_keeps_its_volume",
        workloads::statefulset_keeps_its_volume,
    ),
    (
        "killed_container_restarts_and_deleted_pod_is_gone",
        workloads::killed_container_restarts_and_deleted_pod_is_gone,
    ),
    (
        "in_cluster_client_is_held_to_its_rbac",
        workloads::in_cluster_client_is_held_to_its_rbac,
    ),
];
const TEARDOWN: &str = "down_after_a_crash_leaves_nothing";

fn report(name: &str, started: Instant, result: &TestResult) -> bool {
    let secs = started.elapsed().as_secs_f64();
    match result {
        Ok(()) => println!("test {name} ... ok ({secs:.1} s)"),
        Err(e) => println!(
            "test {name} ... FAILED ({secs:.1} s)\n    {}",
            e.replace('\n', "\n    ")
        ),
    }
    result.is_ok()
}

fn main() -> ExitCode {
    // `cargo test` passes flags like --nocapture; the one free word is a name filter.
    let filter = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_default();
    let selected: Vec<&(&str, Test)> = TESTS.iter().filter(|(n, _)| n.contains(&filter)).collect();
    let run_teardown = TEARDOWN.contains(&filter);
    let mut failed = 0;
    let mut passed = 0;

    if !selected.is_empty() {
        let own = format!("ct{}", std::process::id() % 100_000);
        match Cluster::reuse_or_start(&own) {
            Err(e) => {
                println!("cluster tests: no cluster: {e}");
                failed += selected.len();
            }
            Ok(cluster) => {
                // Each test has its own namespace, so they run side by side.
                let results: Vec<bool> = std::thread::scope(|s| {
                    let handles: Vec<_> = selected
                        .iter()
                        .map(|(name, test)| {
                            let cluster = &cluster;
                            s.spawn(move || {
                                let t = Instant::now();
                                let r = std::panic::catch_unwind(|| test(cluster))
                                    .unwrap_or_else(|_| Err("panicked".into()));
                                report(name, t, &r)
                            })
                        })
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| h.join().unwrap_or(false))
                        .collect()
                });
                passed += results.iter().filter(|ok| **ok).count();
                failed += results.iter().filter(|ok| !**ok).count();
            }
        }
    }
    if run_teardown {
        let t = Instant::now();
        let name = format!("cd{}", std::process::id() % 100_000);
        let r = teardown::down_after_a_crash_leaves_nothing(&name);
        if report(TEARDOWN, t, &r) {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    println!("\ncluster test result: {passed} passed; {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
