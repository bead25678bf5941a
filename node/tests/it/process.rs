//! What the node sets up for its own process, read from `/proc` as an operator would
//! (Linux only: `main.rs` leaves the module out elsewhere).

use crate::common::Node;

/// The kernel's `THP_enabled` for process `pid` (`/proc/<pid>/status`, Linux 5.0 on):
/// false once the process turned transparent huge pages off for itself.
fn thp_enabled(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .unwrap_or_else(|| panic!("no THP_enabled in /proc/{pid}/status"));
    line.trim() == "1"
}

/// The node runs without transparent huge pages (`serve::huge_pages`: a fresh huge
/// page is zeroed whole on the sequencer, a pause every purchase in the batch waits
/// for), and with them when started with `--allow-thp`.
#[test]
fn the_node_runs_without_transparent_huge_pages_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("default"), &[]);
    assert!(
        !thp_enabled(node.pid()),
        "the node left transparent huge pages on"
    );
    node.stop();
    let node = Node::start(&dir.path().join("allowed"), &["--allow-thp"]);
    assert!(
        thp_enabled(node.pid()),
        "--allow-thp: the node turned transparent huge pages off all the same"
    );
    node.stop();
}
