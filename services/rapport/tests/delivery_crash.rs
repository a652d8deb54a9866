//! Exactly once through a crash, with the real binary: a small SMTP server (tests/support) counts every message
//! per Message-ID and never deduplicates; `rapport serve` sends 2,000 personalised marketing emails to it
//! (submitted by `rapport bench send`), is killed with SIGKILL once 800 have arrived, and is started again;
//! the client submits the whole batch again with the same idempotency keys. Every message must arrive
//! exactly once. The same as scripts/delivery-crash.sh (aiosmtpd, 100,000 messages), small enough for CI.
//! On PostgreSQL and Redis when RAPPORT_TEST_DATABASE_URL / RAPPORT_TEST_REDIS_URL are set.

mod support;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{Counts, Rapport, smtp_server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The relay's message lookup: `GET /messages/<Message-ID>` answers `{"received": n}`.
async fn lookup_server(listener: TcpListener, counts: Counts) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { return };
        let counts = counts.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let n = stream.read(&mut buf).await.unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]).to_string();
            let path = request.split_whitespace().nth(1).unwrap_or_default();
            let id = percent_decode(path.trim_start_matches("/messages/"));
            let received = counts.lock().unwrap().get(&id).copied().unwrap_or(0);
            let body = format!("{{\"received\": {received}}}");
            let _ = stream
                .write_all(
                    format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len())
                        .as_bytes(),
                )
                .await;
        });
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn total(counts: &Counts) -> u32 {
    counts.lock().unwrap().values().sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_in_the_middle_of_a_batch_loses_nothing_and_sends_nothing_twice() {
    const N: u32 = 2000;
    let storage = rapport_testkit::testing::TestDatabase::new().await;
    let counts: Counts = Arc::default();
    let smtp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let lookup = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (smtp_port, lookup_port) = (smtp.local_addr().unwrap().port(), lookup.local_addr().unwrap().port());
    tokio::spawn(smtp_server(smtp, counts.clone()));
    tokio::spawn(lookup_server(lookup, counts.clone()));

    let dir = storage.data_dir.path().to_path_buf();
    let config = dir.join("rapport.toml");
    std::fs::write(
        &config,
        format!(
            "[delivery]\nquiet_hours_start = \"00:00\"\nquiet_hours_end = \"00:00\"\nlease_seconds = 4\npoll_interval_ms = 50\n\
             [[delivery.providers]]\nname = \"relay\"\nkind = \"smtp\"\nchannels = [\"email\"]\nprimary = true\n\
             url = \"smtp://127.0.0.1:{smtp_port}?tls=none\"\nconnections = 8\ntimeout_ms = 2000\n\
             reconcile_url = \"http://127.0.0.1:{lookup_port}/messages\"\n"
        ),
    )
    .unwrap();
    let redis = std::env::var("RAPPORT_TEST_REDIS_URL").unwrap_or_default();
    let env = [("RAPPORT__STORAGE__URL", storage.url.as_str()), ("RAPPORT__CACHE__URL", redis.as_str())];
    let config_arg = config.display().to_string();
    let mut server = Rapport::start(&dir, &env, &["--config", &config_arg]);
    let endpoint = server.grpc_url();
    let bench = |extra: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_rapport"));
        c.args(["bench", "send", "--data-dir"])
            .arg(&dir)
            .args(["--endpoint", &endpoint, "--config", &config_arg])
            .args(["--messages", &N.to_string(), "--batch", "500", "--customers", "50", "--run-id", "ci"])
            .args(extra)
            .env("RAPPORT__STORAGE__URL", &storage.url);
        c
    };

    let mut submit = bench(&["--rate", "4000"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while total(&counts) < N * 4 / 10 {
        assert!(Instant::now() < deadline, "only {} messages arrived", total(&counts));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill();
    let at_kill = total(&counts);
    let _ = submit.wait();
    assert!(at_kill < N, "the kill came after everything was sent ({at_kill})");

    server.restart();
    let again = bench(&["--rate", "20000", "--skip-setup"]).output().unwrap();
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let deadline = Instant::now() + Duration::from_secs(120);
    while total(&counts) < N {
        assert!(
            Instant::now() < deadline,
            "only {} of {N} arrived after the restart: {}",
            total(&counts),
            server.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Give a late duplicate the chance to show up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let counts = counts.lock().unwrap().clone();
    assert_eq!(counts.len() as u32, N, "distinct Message-IDs");
    let twice: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).collect();
    assert!(twice.is_empty(), "sent more than once: {twice:?}");
    assert!(!counts.contains_key("<none>"));
    server.terminate();
}
