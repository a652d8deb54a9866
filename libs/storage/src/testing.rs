//! Fresh storage for tests: a temporary data directory (SQLite) or, when `RAPPORT_TEST_DATABASE_URL`
//! names a PostgreSQL server, a new database on it that is dropped afterwards. The same tests thereby
//! run on both backends: CI runs the suite once without the variable and once with it.

use std::str::FromStr;

use sqlx::{ConnectOptions, Connection, postgres::PgConnectOptions};

/// A storage location that exists for the lifetime of the value.
pub struct TestDatabase {
    /// The `storage.url` to configure: empty for SQLite under `data_dir`.
    pub url: String,
    /// A temporary data directory, removed on drop.
    pub data_dir: tempfile::TempDir,
    admin: Option<(String, String)>,
}

impl TestDatabase {
    /// Creates a fresh database on the backend selected by `RAPPORT_TEST_DATABASE_URL`.
    pub async fn new() -> Self {
        let data_dir = tempfile::tempdir().expect("temporary directory");
        let Ok(admin_url) = std::env::var("RAPPORT_TEST_DATABASE_URL") else {
            return Self { url: String::new(), data_dir, admin: None };
        };
        if admin_url.is_empty() {
            return Self { url: String::new(), data_dir, admin: None };
        }
        let name = format!("rapport_t_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnectOptions::from_str(&admin_url)
            .expect("RAPPORT_TEST_DATABASE_URL is a postgres url")
            .connect()
            .await
            .expect("RAPPORT_TEST_DATABASE_URL answers");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create test database");
        conn.close().await.ok();
        let mut url = url::Url::parse(&admin_url).expect("RAPPORT_TEST_DATABASE_URL is a url");
        url.set_path(&format!("/{name}"));
        Self { url: url.to_string(), data_dir, admin: Some((admin_url, name)) }
    }

    /// Opens the database of `service` on this storage (not migrated).
    pub async fn connect(&self, service: &str) -> crate::Db {
        crate::connect(&self.url, self.data_dir.path(), service, &crate::PoolSettings::default())
            .await
            .expect("test database opens")
    }

    /// Whether this test runs on PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        self.admin.is_some()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some((admin_url, name)) = self.admin.take() else {
            return;
        };
        // Drop may run inside or outside a runtime; a thread with its own runtime works in both.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
            if let Ok(rt) = rt {
                rt.block_on(async move {
                    if let Ok(opts) = PgConnectOptions::from_str(&admin_url)
                        && let Ok(mut conn) = opts.connect().await
                    {
                        let _ =
                            sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
                                .execute(&mut conn)
                                .await;
                    }
                });
            }
        })
        .join();
    }
}
