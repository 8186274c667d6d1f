//! What the PostgreSQL suites share: the test database and a schema per test.

#![allow(dead_code)]

use baton_store_postgres::{PgOptions, PgStore};

/// The test database's URL; a run without one fails and says how to get it.
pub fn url() -> String {
    std::env::var("BATON_TEST_POSTGRES").unwrap_or_else(|_| {
        panic!(
            "BATON_TEST_POSTGRES is not set: run the tests with `bash scripts/test`, which \
             starts PostgreSQL and creates a test database, or set it to a database URL \
             such as postgres://postgres@127.0.0.1:5432/baton_test"
        )
    })
}

/// A schema of its own for one test, dropped when the test ends.
pub struct Schema(pub String);

impl Schema {
    pub fn new() -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        Schema(format!(
            "t_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
        ))
    }

    /// A store on this schema: several opened on one schema are several servers
    /// sharing one database.
    pub async fn open(&self) -> PgStore {
        PgStore::open(PgOptions::new(url()).schema(self.0.clone()))
            .await
            .expect("open a PostgreSQL store")
    }

    /// A plain connection set to this schema.
    pub async fn connect(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        client
            .batch_execute(&format!("SET search_path TO \"{}\"", self.0))
            .await
            .expect("search_path");
        client
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let name = self.0.clone();
        let Ok(url) = std::env::var("BATON_TEST_POSTGRES") else {
            return;
        };
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok((client, conn)) =
                    tokio_postgres::connect(&url, tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    // A test that panicked left its store's transactions open on a
                    // runtime that no longer runs: give up on their locks rather than
                    // wait; `scripts/test` drops the whole database at its end.
                    let _ = client
                        .batch_execute(&format!(
                            "SET lock_timeout = '2s'; DROP SCHEMA IF EXISTS \"{name}\" CASCADE"
                        ))
                        .await;
                }
            });
        })
        .join();
    }
}
