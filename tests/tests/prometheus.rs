//! A real Prometheus scrapes a tiny HTTP endpoint on loopback and a query returns its value.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use wattwise_testenv::prometheus::Prometheus;

/// Serves `body` as a Prometheus text exposition on every request; returns `host:port`.
async fn serve_metrics(body: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let body = body.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn prometheus_scrapes_an_endpoint_and_answers_queries() {
    // A value this run alone knows, so nothing but a real scrape can produce it.
    let value = (SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros()
        % 100_000) as f64
        + 0.5;
    let target = serve_metrics(format!(
        "# TYPE wattwise_smoke_watts gauge\nwattwise_smoke_watts{{node=\"node-a\"}} {value}\n\
         # TYPE wattwise_smoke_events counter\nwattwise_smoke_events_total 3\n"
    ))
    .await;
    let prometheus = Prometheus::start(std::slice::from_ref(&target), Duration::from_millis(500))
        .await
        .unwrap();

    let sample = prometheus
        .wait_for_sample("wattwise_smoke_watts", Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(sample.value, value);
    assert_eq!(sample.labels["node"], "node-a");
    assert_eq!(sample.labels["instance"], target);

    let up = prometheus
        .wait_for_sample(
            &format!("up{{instance=\"{target}\"}}"),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(up.value, 1.0);
    let counter = prometheus
        .query("wattwise_smoke_events_total")
        .await
        .unwrap();
    assert_eq!(counter.len(), 1);
    assert_eq!(counter[0].value, 3.0);
}

#[tokio::test]
async fn a_dead_target_is_reported_down_and_bad_promql_is_an_error() {
    // Reserve a port and close it: nothing listens there.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let prometheus = Prometheus::start(std::slice::from_ref(&dead), Duration::from_millis(500))
        .await
        .unwrap();
    let up = prometheus
        .wait_for_sample(
            &format!("up{{instance=\"{dead}\"}}"),
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    assert_eq!(up.value, 0.0);
    let err = prometheus.query("sum(").await.unwrap_err();
    assert!(format!("{err:#}").contains("sum("), "{err:#}");
}
