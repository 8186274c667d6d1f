//! A small pool of PostgreSQL connections: at most `size` open at once, each set to
//! the store's schema when it opens, a broken one dropped rather than handed out again.

use std::sync::Mutex;

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_postgres::{Client, Config, NoTls};

use crate::{Db, redact};
use baton_store::{Error, Result};

pub struct Pool {
    config: Config,
    schema: Option<String>,
    idle: Mutex<Vec<Client>>,
    permits: Semaphore,
}

/// A connection out of the pool; it goes back when dropped, unless it broke.
pub struct Conn<'p> {
    client: Option<Client>,
    /// Set while a transaction is open on it: dropped then (a write abandoned half
    /// way), the connection is closed rather than handed out inside that transaction.
    pub in_transaction: bool,
    pool: &'p Pool,
    _permit: SemaphorePermit<'p>,
}

impl Pool {
    pub fn new(config: Config, schema: Option<String>, size: usize) -> Self {
        Self {
            config,
            schema,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(size.max(1)),
        }
    }

    pub async fn get(&self) -> Result<Conn<'_>> {
        let permit = self.permits.acquire().await.map_err(|_| Error::Closed)?;
        let idle = self.idle.lock().map(|mut v| v.pop()).unwrap_or(None);
        let client = match idle {
            Some(c) if !c.is_closed() => c,
            _ => self.connect().await?,
        };
        Ok(Conn {
            client: Some(client),
            in_transaction: false,
            pool: self,
            _permit: permit,
        })
    }

    /// A new connection of its own, outside the pool's count (the sequencer's, say).
    pub async fn connect(&self) -> Result<Client> {
        let (client, connection) = self.config.connect(NoTls).await.map_err(|e| {
            Error::Unavailable(format!(
                "cannot connect to PostgreSQL at {}: {}",
                redact(&self.config),
                crate::describe(&e)
            ))
        })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "a PostgreSQL connection ended");
            }
        });
        if let Some(schema) = &self.schema {
            client
                .batch_execute(&format!(
                    "SET search_path TO \"{}\"",
                    schema.replace('"', "\"\"")
                ))
                .await
                .db()?;
        }
        Ok(client)
    }

    /// A connection whose messages (notifications) the caller reads itself.
    pub async fn connect_raw(
        &self,
    ) -> Result<(
        Client,
        tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
    )> {
        self.config.connect(NoTls).await.map_err(|e| {
            Error::Unavailable(format!(
                "cannot connect to PostgreSQL at {}: {}",
                redact(&self.config),
                crate::describe(&e)
            ))
        })
    }

    pub fn close(&self) {
        self.permits.close();
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }
}

impl std::ops::Deref for Conn<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client
            .as_ref()
            .expect("a pooled connection is held until dropped")
    }
}

impl std::ops::DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client
            .as_mut()
            .expect("a pooled connection is held until dropped")
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.client.take()
            && !c.is_closed()
            && !self.in_transaction
            && let Ok(mut idle) = self.pool.idle.lock()
        {
            idle.push(c);
        }
    }
}
