//! Which database the daemon keeps its state in: a SQLite file in the state directory
//! (one machine, nothing to run beside it), or the PostgreSQL database that several
//! workers share when `database_url` is set.

use std::sync::Arc;

use store::{PgStore, SqliteStore, Store, StoreError};

use super::config::DaemonConfig;

/// The store `config` names, opened (and its schema brought up to date).
pub async fn open(config: &DaemonConfig) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match &config.database_url {
        Some(url) => Arc::new(
            PgStore::connect(&url.0, &config.worker_name())
                .await?
                .merging_parts_with(super::parts::merge),
        ),
        None => Arc::new(SqliteStore::open(&config.database()).await?),
    })
}
