//! Real processes for the tests of this folder: the `rapport` binary cargo built, and a PostgreSQL and a
//! Redis of their own on free ports (never the shared ones on 5432 and 6379), each in a temporary
//! directory that is removed afterwards. Output goes to a log file per process.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests on one machine).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill").args([sig, &pid.to_string()]).status().expect("kill runs");
    assert!(status.success(), "kill {sig} {pid}");
}

fn wait_for_port(port: u16, within: Duration, what: &str) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < within, "{what} did not listen on {port} within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `rapport serve` child process.
pub struct Rapport {
    pub child: Option<Child>,
    pub grpc_port: u16,
    pub http_port: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    env: Vec<(String, String)>,
    args: Vec<String>,
}

impl Rapport {
    /// Starts `rapport serve` with `data_dir`, `env` (RAPPORT__... and RUST_LOG) and extra `args`, and waits
    /// until its gRPC port answers.
    pub fn start(data_dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Self {
        let mut r = Rapport {
            child: None,
            grpc_port: free_port(),
            http_port: free_port(),
            data_dir: data_dir.to_path_buf(),
            log: data_dir.join(format!("rapport-{}.log", free_port())),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_rapport"));
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--grpc-listen")
            .arg(format!("127.0.0.1:{}", self.grpc_port))
            .arg("--http-listen")
            .arg(format!("127.0.0.1:{}", self.http_port))
            .args(&self.args)
            .env_remove("RUST_LOG")
            .env("RAPPORT__TELEMETRY__LOG_FILTER", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in &self.env {
            command.env(k, v);
        }
        self.child = Some(command.spawn().expect("rapport starts"));
        wait_for_port(self.grpc_port, Duration::from_secs(60), "rapport");
    }

    /// `http://127.0.0.1:PORT` of the gRPC port.
    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// The admin token the process created in its data directory.
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin.token")).unwrap().trim().to_string()
    }

    /// A channel to the gRPC port with a deadline per call.
    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(self.grpc_url())
            .unwrap()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends SIGTERM and waits for the exit; the exit status and how long it took.
    pub fn terminate(&mut self) -> (std::process::ExitStatus, Duration) {
        let start = Instant::now();
        signal(self.pid(), "-TERM");
        let status = self.child.take().unwrap().wait().unwrap();
        (status, start.elapsed())
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill(&mut self) {
        signal(self.pid(), "-KILL");
        let _ = self.child.take().unwrap().wait();
    }

    /// Starts the same process again on the same ports and data.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop it first");
        self.spawn();
    }

    /// Everything the process wrote to stdout and stderr.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Rapport {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The PostgreSQL server binaries (initdb, pg_ctl, postgres) of this machine.
fn pg_bin(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs.into_iter().rev().map(|d| d.join(name)).find(|p| p.exists()).unwrap_or_else(|| PathBuf::from(name))
}

/// Whether this machine has PostgreSQL server binaries (initdb, pg_ctl).
pub fn postgres_installed() -> bool {
    pg_bin("initdb").is_absolute() && pg_bin("pg_ctl").is_absolute()
}

/// Whether `redis-server` is on the PATH.
pub fn redis_installed() -> bool {
    Command::new("redis-server").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

/// A PostgreSQL server of the test's own: initdb into a temporary directory, started on a free port,
/// trust authentication for the local user.
pub struct Postgres {
    pub port: u16,
    dir: tempfile::TempDir,
    running: bool,
}

impl Postgres {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let user = if is_root() { "postgres" } else { "" };
        let mut initdb = Command::new(pg_bin("initdb"));
        initdb.args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"]).arg(&data);
        let status = as_user(initdb, user, dir.path()).stdout(Stdio::null()).stderr(Stdio::null()).status();
        assert!(status.is_ok_and(|s| s.success()), "initdb failed");
        let mut pg = Postgres { port: free_port(), dir, running: false };
        pg.start_again();
        pg
    }

    fn pg_ctl(&self, args: &[&str]) -> std::process::ExitStatus {
        let mut c = Command::new(pg_bin("pg_ctl"));
        c.arg("-D").arg(self.dir.path().join("data")).args(args);
        let user = if is_root() { "postgres" } else { "" };
        as_user(c, user, self.dir.path()).stdout(Stdio::null()).stderr(Stdio::null()).status().unwrap()
    }

    /// The URL of its `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops it at once (in-flight transactions are rolled back, as in a crash).
    pub fn stop(&mut self) {
        assert!(self.pg_ctl(&["stop", "-m", "immediate", "-w"]).success(), "pg_ctl stop");
        self.running = false;
    }

    /// Starts it again on the same port and data.
    pub fn start_again(&mut self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("pg.log");
        let status = self.pg_ctl(&["start", "-w", "-t", "60", "-l", log.to_str().unwrap(), "-o", &options]);
        assert!(status.success(), "pg_ctl start: {}", std::fs::read_to_string(&log).unwrap_or_default());
        self.running = true;
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            let _ = self.pg_ctl(&["stop", "-m", "immediate", "-w"]);
        }
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

/// PostgreSQL refuses to run as root: run it as the `postgres` system user then, owning `dir`.
fn as_user(command: Command, user: &str, dir: &Path) -> Command {
    if user.is_empty() {
        return command;
    }
    let _ = Command::new("chown").args(["-R", user]).arg(dir).status();
    let program = command.get_program().to_string_lossy().into_owned();
    let args: Vec<String> = command.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
    let mut c = Command::new("runuser");
    c.args(["-u", user, "--", &program]).args(args);
    c
}

/// A redis-server of the test's own on a free port, keeping nothing on disk.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Redis {
    pub fn start() -> Self {
        let mut r = Redis { port: free_port(), child: None, dir: tempfile::tempdir().unwrap() };
        r.start_again();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn start_again(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        wait_for_port(self.port, Duration::from_secs(20), "redis-server");
    }

    /// Sends `sig` (`-STOP`, `-CONT`) to the server.
    pub fn signal(&self, sig: &str) {
        signal(self.child.as_ref().expect("running").id(), sig);
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Messages an SMTP server of [`smtp_server`] received, by Message-ID.
pub type Counts = Arc<Mutex<HashMap<String, u32>>>;

/// Serves SMTP: every complete DATA is counted under its Message-ID; a DATA cut off by a closed
/// connection is discarded, as RFC 5321 requires.
pub async fn smtp_server(listener: tokio::net::TcpListener, counts: Counts) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { return };
        let counts = counts.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut r = BufReader::new(r);
            if w.write_all(b"220 test ESMTP\r\n").await.is_err() {
                return;
            }
            let mut line = String::new();
            loop {
                line.clear();
                if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                let cmd = line.trim_end().to_ascii_uppercase();
                let reply: &[u8] = if cmd.starts_with("EHLO") {
                    b"250-test\r\n250 8BITMIME\r\n"
                } else if cmd == "DATA" {
                    if w.write_all(b"354 go ahead\r\n").await.is_err() {
                        return;
                    }
                    let mut body = String::new();
                    loop {
                        let mut l = String::new();
                        if r.read_line(&mut l).await.unwrap_or(0) == 0 {
                            return; // cut off: nothing is delivered
                        }
                        if l == ".\r\n" {
                            break;
                        }
                        body.push_str(&l);
                    }
                    let id = body
                        .lines()
                        .find_map(|l| l.strip_prefix("Message-ID: "))
                        .unwrap_or("<none>")
                        .trim()
                        .to_string();
                    *counts.lock().unwrap().entry(id).or_default() += 1;
                    b"250 queued\r\n"
                } else if cmd == "QUIT" {
                    let _ = w.write_all(b"221 bye\r\n").await;
                    return;
                } else {
                    b"250 ok\r\n"
                };
                if w.write_all(reply).await.is_err() {
                    return;
                }
            }
        });
    }
}
