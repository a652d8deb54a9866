//! Starts Rapport for a test: all services (or a chosen few) on port 0, with a temporary data
//! directory, or on a fresh PostgreSQL database when `RAPPORT_TEST_DATABASE_URL` is set and on Redis
//! when `RAPPORT_TEST_REDIS_URL` is set. Everything is removed when the suite is dropped.

use std::time::Duration;

use rapport::Server;
use rapport_config::{Overrides, Settings};
use rapport_storage::testing::TestDatabase;

pub use rapport_storage::testing;

/// A running suite and the storage it owns.
pub struct TestSuite {
    server: Option<Server>,
    /// The storage of this suite; shared by every process of a split suite.
    pub storage: std::sync::Arc<TestDatabase>,
    /// `http://127.0.0.1:PORT` of the gRPC port.
    pub grpc_url: String,
    /// `http://127.0.0.1:PORT` of the HTTP port.
    pub http_url: String,
    /// The admin bearer token.
    pub admin_token: String,
}

/// How to start a suite.
#[derive(Debug, Default, Clone)]
pub struct SuiteOptions {
    /// Services to run; empty means all.
    pub services: Vec<String>,
    /// Extra configuration as `RAPPORT__SECTION__KEY` pairs.
    pub env: Vec<(String, String)>,
    /// A TOML configuration file's content, loaded before the environment.
    pub config_toml: Option<String>,
    /// The gRPC and HTTP addresses to listen on; port 0 (any free port) when unset.
    pub listen: Option<(String, String)>,
}

impl SuiteOptions {
    /// Only these services.
    pub fn services(names: &[&str]) -> Self {
        Self { services: names.iter().map(|s| s.to_string()).collect(), ..Self::default() }
    }

    /// Adds a TOML configuration file (as `--config FILE` would).
    pub fn config(mut self, toml: impl Into<String>) -> Self {
        self.config_toml = Some(toml.into());
        self
    }

    /// Adds a configuration value (`key` like `clients.identity`).
    pub fn set(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.push((format!("RAPPORT__{}", key.replace('.', "__").to_ascii_uppercase()), value.into()));
        self
    }
}

impl TestSuite {
    /// All five services on fresh storage.
    pub async fn start() -> Self {
        Self::start_with(SuiteOptions::default()).await
    }

    /// A suite as described by `options`, on fresh storage.
    pub async fn start_with(options: SuiteOptions) -> Self {
        let storage = std::sync::Arc::new(TestDatabase::new().await);
        Self::start_on(storage, options).await
    }

    /// A suite on existing storage (for split suites and restarts).
    pub async fn start_on(storage: std::sync::Arc<TestDatabase>, options: SuiteOptions) -> Self {
        let settings = Self::settings(&storage, &options).expect("test configuration is valid");
        let server = rapport::start(settings).await.expect("suite starts");
        Self {
            grpc_url: format!("http://{}", server.grpc_addr),
            http_url: format!("http://{}", server.http_addr),
            admin_token: server.admin_token.clone(),
            server: Some(server),
            storage,
        }
    }

    /// The settings a suite on `storage` would run with.
    pub fn settings(storage: &TestDatabase, options: &SuiteOptions) -> anyhow::Result<Settings> {
        let mut env = vec![
            ("RAPPORT__STORAGE__URL".to_string(), storage.url.clone()),
            ("RAPPORT__STORAGE__MAX_CONNECTIONS".to_string(), "8".to_string()),
            ("RAPPORT__TELEMETRY__LOG_FILTER".to_string(), "warn".to_string()),
        ];
        if let Ok(redis) = std::env::var("RAPPORT_TEST_REDIS_URL") {
            env.push(("RAPPORT__CACHE__URL".to_string(), redis));
        }
        env.extend(options.env.iter().cloned());
        let overrides = Overrides {
            data_dir: Some(storage.data_dir.path().to_path_buf()),
            grpc_listen: Some(options.listen.as_ref().map_or("127.0.0.1:0".into(), |l| l.0.clone())),
            http_listen: Some(options.listen.as_ref().map_or("127.0.0.1:0".into(), |l| l.1.clone())),
            services: (!options.services.is_empty()).then(|| options.services.clone()),
        };
        let file = match &options.config_toml {
            Some(toml) => {
                let path = storage.data_dir.path().join(format!("config-{}.toml", uuid::Uuid::new_v4()));
                std::fs::write(&path, toml)?;
                Some(path)
            }
            None => None,
        };
        Ok(Settings::load_with_env(file.as_deref(), &overrides, env)?)
    }

    /// The clients the server wired (in-process for its own services, remote for configured ones).
    pub fn clients(&self) -> Option<rapport_rpc::Clients> {
        self.server.as_ref().map(|s| s.clients.clone())
    }

    /// A connected channel to the gRPC port.
    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(self.grpc_url.clone())
            .expect("url")
            .timeout(Duration::from_secs(30))
            .connect()
            .await
            .expect("grpc port answers")
    }

    /// `message` as a request carrying the admin token.
    pub fn admin<T>(&self, message: T) -> tonic::Request<T> {
        with_token(message, &self.admin_token)
    }

    /// Stops the suite, letting in-flight calls finish.
    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.expect("clean shutdown");
        }
    }
}

/// The five services, each in a server of its own on its own ports, calling each other over gRPC with
/// the shared admin token: a split deployment in one test process, on one [`TestDatabase`].
pub struct SplitSuite {
    /// The server of each service, by service name.
    pub parts: Vec<(&'static str, TestSuite)>,
    pub storage: std::sync::Arc<TestDatabase>,
    pub admin_token: String,
}

impl SplitSuite {
    /// Starts identity, consent, profile, decision and delivery as five servers on fresh storage.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// As [`SplitSuite::start`], with extra configuration (`key`, value) given to every server.
    pub async fn start_with(settings: &[(&str, &str)]) -> Self {
        let storage = std::sync::Arc::new(TestDatabase::new().await);
        let free = || {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            l.local_addr().expect("local address").to_string()
        };
        let addrs: Vec<(&'static str, String, String)> =
            rapport_config::SERVICE_NAMES.iter().map(|s| (*s, free(), free())).collect();
        let mut parts = Vec::new();
        // Identity first: it creates the admin token file the others share and call each other with.
        for (service, grpc, http) in &addrs {
            let mut options = SuiteOptions::services(&[service]);
            options.listen = Some((grpc.clone(), http.clone()));
            for (other, other_grpc, _) in addrs.iter().filter(|(o, _, _)| o != service) {
                options = options.set(&format!("clients.{other}"), format!("http://{other_grpc}"));
            }
            for (k, v) in settings {
                options = options.set(k, *v);
            }
            parts.push((*service, TestSuite::start_on(storage.clone(), options).await));
        }
        let admin_token = parts[0].1.admin_token.clone();
        Self { parts, storage, admin_token }
    }

    /// The server running `service`.
    pub fn part(&self, service: &str) -> &TestSuite {
        &self.parts.iter().find(|(s, _)| *s == service).expect("one of the five services").1
    }

    /// A connected channel to `service`.
    pub async fn channel(&self, service: &str) -> tonic::transport::Channel {
        self.part(service).channel().await
    }

    /// `message` as a request carrying the admin token.
    pub fn admin<T>(&self, message: T) -> tonic::Request<T> {
        with_token(message, &self.admin_token)
    }

    /// Stops every server, the last started first.
    pub async fn stop(mut self) {
        while let Some((_, part)) = self.parts.pop() {
            part.stop().await;
        }
    }
}

/// `message` as a request carrying `token`.
pub fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("token is a valid header"));
    request
}

/// A plain HTTP/1.1 GET of `url` (`http://host:port/path`): the status code and the body.
pub async fn http_get(url: &str) -> (u16, String) {
    http_request("GET", url, None).await
}

/// A plain HTTP/1.1 POST of a form body (`application/x-www-form-urlencoded`) to `url`.
pub async fn http_post_form(url: &str, body: &str) -> (u16, String) {
    http_request("POST", url, Some(body)).await
}

async fn http_request(method: &str, url: &str, body: Option<&str>) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").expect("http url");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let mut stream = tokio::net::TcpStream::connect(authority).await.expect("http port answers");
    let mut request = format!("{method} {path} HTTP/1.1\r\nhost: {authority}\r\nconnection: close\r\n");
    if let Some(body) = body {
        request.push_str(&format!(
            "content-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        ));
    } else {
        request.push_str("\r\n");
    }
    stream.write_all(request.as_bytes()).await.expect("request written");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("response read");
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status line");
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}
