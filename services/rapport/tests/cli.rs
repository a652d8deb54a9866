//! The `rapport` binary as an operator meets it: bad flags, bad configuration, a port in use and an
//! unreachable database each get one clear line and a non-zero exit; SIGTERM stops it cleanly.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn rapport(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rapport"));
    command.args(args).env_remove("RUST_LOG");
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("the binary runs")
}

fn fails_with(output: Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "expected a failure, got {:?}: {stderr}", output.status);
    assert!(stderr.contains(expected), "stderr should name `{expected}`: {stderr}");
}

fn data_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

#[test]
fn an_unknown_flag_is_refused() {
    let output = rapport(&["serve", "--bogus"], &[]);
    assert_eq!(output.status.code(), Some(2));
    fails_with(output, "--bogus");
}

#[test]
fn an_unknown_config_key_is_named() {
    let dir = data_dir();
    let file = dir.path().join("rapport.toml");
    std::fs::write(&file, "[server]\ngrpc_listn = \"127.0.0.1:1\"\n").unwrap();
    let output =
        rapport(&["serve", "--config", file.to_str().unwrap(), "--data-dir", dir.path().to_str().unwrap()], &[]);
    fails_with(output, "grpc_listn");
}

#[test]
fn a_bad_environment_value_is_named() {
    let dir = data_dir();
    let output = rapport(
        &["serve", "--data-dir", dir.path().to_str().unwrap()],
        &[("RAPPORT__SERVER__MAX_CONCURRENT_REQUESTS", "lots")],
    );
    fails_with(output, "server.max_concurrent_requests");
}

#[test]
fn a_bad_survivorship_rule_or_attribute_is_named() {
    let dir = data_dir();
    let file = dir.path().join("rapport.toml");
    std::fs::write(&file, "[identity.survivorship.attribute_rules]\nshoe_size = \"longest\"\n").unwrap();
    let args = |config: bool| {
        let mut a = vec!["serve", "--data-dir", dir.path().to_str().unwrap()];
        a.extend(["--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"]);
        if config {
            a.extend(["--config", file.to_str().unwrap()]);
        }
        a
    };
    let output = rapport(&args(false), &[("RAPPORT__IDENTITY__SURVIVORSHIP__DEFAULT_RULE", "newest")]);
    fails_with(output, "identity.survivorship.default_rule: unknown rule `newest`");
    fails_with(rapport(&args(true), &[]), "identity.survivorship.attribute_rules.shoe_size: unknown attribute");
}

#[test]
fn an_unknown_service_is_named() {
    let dir = data_dir();
    let output = rapport(&["serve", "--services", "consnt", "--data-dir", dir.path().to_str().unwrap()], &[]);
    fails_with(output, "consnt");
}

#[test]
fn a_port_in_use_is_named() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = data_dir();
    let output = rapport(
        &["serve", "--data-dir", dir.path().to_str().unwrap(), "--grpc-listen", &addr, "--http-listen", "127.0.0.1:0"],
        &[],
    );
    fails_with(output, "server.grpc_listen");
}

#[test]
fn an_unreachable_database_is_named() {
    let dir = data_dir();
    let output = rapport(
        &[
            "serve",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ],
        &[
            ("RAPPORT__STORAGE__URL", "postgres://postgres@127.0.0.1:1/test"),
            ("RAPPORT__STORAGE__ACQUIRE_TIMEOUT_SECONDS", "2"),
        ],
    );
    fails_with(output, "storage.url");
}

#[test]
fn serve_creates_an_admin_token_and_stops_cleanly_on_sigterm() {
    let dir = data_dir();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rapport"))
        .args([
            "serve",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .env("RAPPORT__TELEMETRY__LOG_FILTER", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let token = dir.path().join("admin.token");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !token.exists() {
        assert!(std::time::Instant::now() < deadline, "no admin token after 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Ask it to stop at once, while it may still be starting: the signal is listened for before the
    // start (and before the token is written), so this is a clean exit too, never death by SIGTERM.
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "still running 30 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(status.code(), Some(0), "{stdout} {}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("created an admin token in"), "{stdout}");
    assert!(stdout.contains(&token.display().to_string()), "{stdout}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the admin token is readable by others: {mode:o}");
    }
}
