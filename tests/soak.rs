//! A short soak (`scripts/soak.sh --duration 25`): connwatch with kicks on, churning connections
//! and a leak that comes back; RSS and open file descriptors must stay flat (loosely), sweeps
//! keep happening and SIGTERM exits 0. Sweep times are recorded but not asserted.

use std::path::Path;
use std::process::Command;

#[test]
fn a_short_soak_stays_flat() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("soak.csv");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("timeout")
        .args(["--signal=KILL", "120"])
        .arg(root.join("scripts/soak.sh"))
        .args([
            "--duration",
            "25",
            "--every",
            "1",
            "--rss-bound",
            "1.0",
            "--fd-slack",
            "32",
        ])
        .arg("--dir")
        .arg(dir.path().join("work"))
        .arg("--out")
        .arg(&csv)
        .env("CONNWATCH_BIN", env!("CARGO_BIN_EXE_connwatch"))
        .env(
            "CONNWATCH_DEV_BIN",
            testkit::tool_bin("connwatch-dev").unwrap(),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let log = std::fs::read_to_string(dir.path().join("work/connwatch.log")).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(30).collect();
    assert_eq!(
        out.status.code(),
        Some(0),
        "soak not flat:\n{stdout}\n{stderr}\nconnwatch log tail:\n{}",
        tail.join("\n")
    );
    assert!(stdout.contains("soak: FLAT"), "{stdout}");
    assert!(stdout.contains("exited 0 on SIGTERM"), "{stdout}");
    let text = std::fs::read_to_string(&csv).unwrap();
    let rows: Vec<Vec<u64>> = text
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    assert!(rows.len() >= 15, "only {} samples:\n{text}", rows.len());
    assert!(rows.iter().all(|r| r[1] > 0 && r[2] > 0), "{text}");
    // Sweeps kept happening to the end, and kicks really ran (the leak came back to be kicked).
    assert!(rows.last().unwrap()[3] >= 10, "{text}");
    assert!(
        log.contains("result=\"kicked\"") || log.contains("result=kicked"),
        "no kick in the soak:\n{}",
        tail.join("\n")
    );
    // Loose bounds: no fd leak beyond a generous slack over the whole run.
    let max_fd = rows.iter().map(|r| r[2]).max().unwrap();
    let first_fd = rows[0][2];
    assert!(
        max_fd <= first_fd + 64,
        "fds grew from {first_fd} to {max_fd}:\n{text}"
    );
}
