//! `state.file` has one writer at a time: `connwatch run` holds it while it runs (a lock on
//! `<state.file>.lock`), so a second `run` does not start, `kick --forget` refuses rather than
//! have its change overwritten by the next round, and `report` still works, leaving the file
//! whole.

mod support;

use std::time::Duration;

use support::*;

const WAIT: Duration = Duration::from_secs(30);

async fn connwatch(path: &std::path::Path, args: &[&str]) -> RunOutput {
    let mut a = vec!["--config".to_string(), path.display().to_string()];
    a.extend(args.iter().map(|s| s.to_string()));
    tokio::task::spawn_blocking(move || run_connwatch(&a, WAIT))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_service_owns_the_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(ClusterSpec::new(dir.path().join("cluster")).servers(1)).unwrap();
    let state = dir.path().join("state.json");
    let path = write_config(
        dir.path(),
        &format!(
            "{}[sweep]\ninterval = \"300ms\"\n[live]\nreconcile_interval = \"300ms\"\n[state]\nfile = {:?}\n",
            cluster.connwatch_toml(),
            state.display().to_string()
        ),
    );
    let running = Running::start(&path, dir.path().join("run.log"));
    assert!(
        wait_until_async(WAIT, || running.rounds().0 >= 1 && state.exists()).await,
        "{}",
        running.log()
    );
    let holder = format!("in use by connwatch run (pid {})", running.pid());

    // A second service on the same file does not start (it would overwrite the first's
    // findings and kick memory every round): exit 6, naming the setting and the holder.
    let second = connwatch(&path, &["run"]).await;
    assert_eq!(second.code, Some(6), "{}", second.stderr);
    assert!(
        second.stderr.contains("state.file") && second.stderr.contains(&holder),
        "{}",
        second.stderr
    );

    // Forgetting while it runs would be undone by its next round: refused, exit 1.
    let forget = connwatch(&path, &["kick", "--forget", "--all"]).await;
    assert_eq!(forget.code, Some(1), "{}", forget.stderr);
    assert!(
        forget.stderr.contains(&holder) && forget.stderr.contains("stop `connwatch run` first"),
        "{}",
        forget.stderr
    );

    // A report still works beside it, and the file stays whole through both writers' rounds.
    let report = report_json_async(&path).await;
    assert_eq!(report["sweep"]["partial"], false);
    let rounds = running.rounds().0;
    assert!(wait_until_async(WAIT, || running.rounds().0 >= rounds + 2).await);
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert!(saved["servers"].is_object(), "{saved:#}");
    assert_eq!(running.terminate(), Some(0));

    // Stopped, the lock is free: forgetting works.
    let forget = connwatch(&path, &["kick", "--forget", "--all"]).await;
    assert_eq!(forget.code, Some(0), "{}", forget.stderr);
    assert!(
        forget.stdout.contains("nothing to forget"),
        "{}",
        forget.stdout
    );
}
