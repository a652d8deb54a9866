//! Group commit: writers hand their rows to one task that writes whatever has queued up in a single
//! transaction and then answers each of them, so that many concurrent small writes cost one commit
//! (one fsync on SQLite, one round of locks on PostgreSQL) instead of one each. A caller's write is
//! durable when its answer arrives; if a batch fails, its items are retried one by one so that a bad
//! item fails alone.

use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

use crate::{Db, Outbox, StorageError, Tx};

/// Writes a batch of items inside the transaction given.
pub type WriteBatch<T> =
    Arc<dyn for<'a> Fn(&'a mut Tx, &'a [T]) -> BoxFuture<'a, Result<(), StorageError>> + Send + Sync>;

type Queued<T> = (T, oneshot::Sender<Result<(), String>>);

/// A group-commit writer of items of type `T`.
pub struct GroupCommit<T> {
    queue: mpsc::Sender<Queued<T>>,
}

impl<T> Clone for GroupCommit<T> {
    fn clone(&self) -> Self {
        Self { queue: self.queue.clone() }
    }
}

impl<T: Clone + Send + Sync + 'static> GroupCommit<T> {
    /// Starts the writer on `outbox`'s database: at most `max_batch` items per transaction, committed
    /// through the outbox so that its readers wake. It stops when every handle is dropped.
    pub fn spawn(outbox: Outbox, max_batch: usize, write: WriteBatch<T>) -> Self {
        let (queue, mut rx) = mpsc::channel::<Queued<T>>(max_batch.max(1) * 8);
        tokio::spawn(async move {
            let mut batch: Vec<Queued<T>> = Vec::with_capacity(max_batch);
            while let Some(first) = rx.recv().await {
                batch.push(first);
                while batch.len() < max_batch.max(1) {
                    match rx.try_recv() {
                        Ok(item) => batch.push(item),
                        Err(_) => break,
                    }
                }
                let items: Vec<T> = batch.iter().map(|(i, _)| i.clone()).collect();
                match write_in_one(&outbox, &write, &items).await {
                    Ok(()) => {
                        for (_, answer) in batch.drain(..) {
                            let _ = answer.send(Ok(()));
                        }
                    }
                    Err(e) if batch.len() == 1 => {
                        for (_, answer) in batch.drain(..) {
                            let _ = answer.send(Err(e.to_string()));
                        }
                    }
                    Err(_) => {
                        for (item, answer) in batch.drain(..) {
                            let alone = write_in_one(&outbox, &write, std::slice::from_ref(&item)).await;
                            let _ = answer.send(alone.map_err(|e| e.to_string()));
                        }
                    }
                }
            }
        });
        Self { queue }
    }

    /// Writes `item`; returns once the transaction holding it committed.
    pub async fn write(&self, item: T) -> Result<(), StorageError> {
        let (answer, answered) = oneshot::channel();
        self.queue
            .send((item, answer))
            .await
            .map_err(|_| StorageError::Unavailable("the group-commit writer stopped".into()))?;
        match answered.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StorageError::Unavailable(format!("group commit failed: {e}"))),
            Err(_) => Err(StorageError::Unavailable("the group-commit writer stopped".into())),
        }
    }
}

async fn write_in_one<T>(outbox: &Outbox, write: &WriteBatch<T>, items: &[T]) -> Result<(), StorageError> {
    let db: &Db = outbox.db();
    let mut tx = db.begin().await?;
    write(&mut tx, items).await?;
    outbox.commit(tx).await
}
