//! Publish failures of the advisory queue, by kind, against a real nats-server: the kind is
//! counted in `connwatch_advisories_publish_failures_total{kind}` and the advisory stays queued
//! until it is confirmed.

mod support;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use connwatch::advisory::publisher::{Publisher, PublisherStats};
use connwatch::advisory::Advisory;
use connwatch::config::AdvisoryConfig;
use support::*;

const WAIT: Duration = Duration::from_secs(20);

fn advisory() -> Advisory {
    Advisory {
        subject: "connwatch.advisory.test.1".into(),
        id: "id-1".into(),
        body: serde_json::json!({ "n": 1 }),
    }
}

async fn connect(url: &str) -> async_nats::Client {
    async_nats::ConnectOptions::with_user_and_password("sys".into(), "sys-dev-password".into())
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"))
}

/// With JetStream acknowledgement: a frozen server never answers (a timeout); running again
/// without a stream for the subject, it answers that nothing stores it (no ack). Either way the
/// advisory stays queued. (Core NATS publishing confirms with a client flush, which a frozen
/// server's open socket accepts: it cannot time out this way.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_counted_by_kind_and_the_advisory_stays_queued() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(ClusterSpec::new(dir.path()).servers(1)).unwrap();
    let client = connect(&cluster.client_url(0)).await;
    let stats = Arc::new(PublisherStats::default());
    let cfg = AdvisoryConfig {
        jetstream: true,
        publish_timeout: Duration::from_millis(300),
        ..AdvisoryConfig::default()
    };
    let publisher = Publisher::spawn(client, &cfg, stats.clone());

    cluster.pause(0).unwrap();
    publisher.enqueue(advisory());
    assert!(
        wait_until_async(WAIT, || stats.failed("timeout") >= 1).await,
        "no timeout counted"
    );
    assert_eq!(stats.failed("no_ack"), 0);
    assert_eq!(publisher.queued(), 1, "a failed advisory stays queued");

    cluster.resume(0).unwrap();
    assert!(
        wait_until_async(WAIT, || stats.failed("no_ack") >= 1).await,
        "no no_ack counted"
    );
    assert_eq!(stats.published.get(), 0);
    assert_eq!(stats.failed("disconnected"), 0);
    assert_eq!(publisher.shutdown(Duration::from_millis(100)).await, 1);
}

/// An advisory larger than the server's `max_payload` (1 MiB by default) can never be sent:
/// it is dropped and counted in `connwatch_advisories_too_large_total`, and the advisories
/// queued with it and after it are published, once each (it held up the queue forever before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_advisory_too_large_to_publish_is_dropped_and_the_queue_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(ClusterSpec::new(dir.path()).servers(1)).unwrap();
    let client = connect(&cluster.client_url(0)).await;
    let watcher = connect(&cluster.client_url(0)).await;
    let mut sub = watcher
        .subscribe("connwatch.advisory.test.>")
        .await
        .unwrap();
    round_trip(&watcher).await;
    let stats = Arc::new(PublisherStats::default());
    let publisher = Publisher::spawn(client, &AdvisoryConfig::default(), stats.clone());

    let numbered = |n: u32, body: serde_json::Value| Advisory {
        subject: format!("connwatch.advisory.test.{n}"),
        id: format!("id-{n}"),
        body,
    };
    publisher.enqueue(numbered(1, serde_json::json!({ "n": 1 })));
    let huge = "x".repeat(2 << 20);
    publisher.enqueue(numbered(2, serde_json::json!({ "n": 2, "pad": huge })));
    publisher.enqueue(numbered(3, serde_json::json!({ "n": 3 })));
    assert!(
        wait_until_async(WAIT, || stats.published.get() >= 2).await,
        "the advisories around the too-large one were not published (published {}, failures {})",
        stats.published.get(),
        stats.failed("too_large")
    );
    let mut got = Vec::new();
    while got.len() < 2 {
        let msg = tokio::time::timeout(WAIT, sub.next())
            .await
            .expect("an advisory within the deadline")
            .expect("subscription open");
        got.push(msg.subject.to_string());
    }
    assert_eq!(
        got,
        ["connwatch.advisory.test.1", "connwatch.advisory.test.3"]
    );
    assert_eq!(stats.too_large.get(), 1);
    assert_eq!(stats.failed("too_large"), 0, "it is not retried");
    assert_eq!(publisher.queued(), 0);
    // Another one after it goes out too.
    publisher.enqueue(numbered(4, serde_json::json!({ "n": 4 })));
    let msg = tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(msg.subject.as_str(), "connwatch.advisory.test.4");
    assert_eq!(publisher.shutdown(Duration::from_secs(5)).await, 0);
}
