//! Queries written once with `$1` placeholders, run on a pool or inside a transaction of either backend,
//! with their values bound from a slice ([`V`]) so that one function serves every query shape.

use rapport_errors::Error;
use sqlx::{FromRow, postgres::PgRow, sqlite::SqliteRow};

use crate::{Db, Tx, on_db, on_tx};

/// A bound value.
#[derive(Debug, Clone)]
pub enum V {
    I(i64),
    S(String),
    B(Vec<u8>),
    /// A NULL integer.
    N,
    /// A NULL text.
    SN,
    /// A floating-point number.
    F(f64),
}

impl From<f64> for V {
    fn from(v: f64) -> Self {
        V::F(v)
    }
}

impl From<Vec<u8>> for V {
    fn from(v: Vec<u8>) -> Self {
        V::B(v)
    }
}

impl From<i64> for V {
    fn from(v: i64) -> Self {
        V::I(v)
    }
}

impl From<i32> for V {
    fn from(v: i32) -> Self {
        V::I(i64::from(v))
    }
}

impl From<&str> for V {
    fn from(v: &str) -> Self {
        V::S(v.to_string())
    }
}

impl From<&String> for V {
    fn from(v: &String) -> Self {
        V::S(v.clone())
    }
}

impl From<String> for V {
    fn from(v: String) -> Self {
        V::S(v)
    }
}

impl From<Option<String>> for V {
    fn from(v: Option<String>) -> Self {
        v.map_or(V::SN, V::S)
    }
}

impl From<bool> for V {
    fn from(v: bool) -> Self {
        V::I(i64::from(v))
    }
}

impl From<Option<i64>> for V {
    fn from(v: Option<i64>) -> Self {
        v.map_or(V::N, V::I)
    }
}

/// Binds `$binds` to the query `$q`.
macro_rules! bind_all {
    ($q:expr, $binds:expr) => {{
        let mut q = $q;
        for b in $binds {
            q = match b {
                V::I(i) => q.bind(*i),
                V::S(s) => q.bind(s.clone()),
                V::B(b) => q.bind(b.clone()),
                V::N => q.bind(None::<i64>),
                V::SN => q.bind(None::<String>),
                V::F(f) => q.bind(*f),
            };
        }
        q
    }};
}

/// Where a query runs.
pub enum Exec<'a> {
    Db(&'a Db),
    Tx(&'a mut Tx),
}

impl Exec<'_> {
    /// Every row of `sql` as `O`.
    pub async fn all<O>(&mut self, sql: &str, binds: &[V]) -> Result<Vec<O>, Error>
    where
        O: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin,
    {
        Ok(match self {
            Exec::Db(db) => {
                on_db!(*db, p => bind_all!(sqlx::query_as::<_, O>(sqlx::AssertSqlSafe(sql.to_string())), binds).fetch_all(p).await?)
            }
            Exec::Tx(tx) => {
                on_tx!(&mut **tx, t => bind_all!(sqlx::query_as::<_, O>(sqlx::AssertSqlSafe(sql.to_string())), binds).fetch_all(&mut **t).await?)
            }
        })
    }

    /// Runs a statement; the rows it changed.
    pub async fn run(&mut self, sql: &str, binds: &[V]) -> Result<u64, Error> {
        Ok(match self {
            Exec::Db(db) => {
                on_db!(*db, p => bind_all!(sqlx::query(sqlx::AssertSqlSafe(sql.to_string())), binds).execute(p).await?.rows_affected())
            }
            Exec::Tx(tx) => {
                on_tx!(&mut **tx, t => bind_all!(sqlx::query(sqlx::AssertSqlSafe(sql.to_string())), binds).execute(&mut **t).await?.rows_affected())
            }
        })
    }
}
