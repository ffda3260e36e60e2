//! Versioned schema migrations embedded in the binary, applied once each
//! and recorded in `schema_migrations`.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use tokio_postgres::Client;

use super::DbError;

/// One embedded migration: `migrations/NNNN_name.sql`.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Its version, the file's number; applied in increasing order.
    pub version: i32,
    /// Its name, the file name without the number and `.sql`.
    pub name: &'static str,
    /// The SQL, run in one transaction.
    pub sql: &'static str,
}

impl Migration {
    /// The SHA-256 of the SQL, hex: recorded when applied, compared after.
    pub fn checksum(&self) -> String {
        Sha256::digest(self.sql.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// Every migration this binary knows, in order. Released files never change
/// (their checksum is checked); a schema change is a new file here.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../../../migrations/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "review",
        sql: include_str!("../../../migrations/0002_review.sql"),
    },
    Migration {
        version: 3,
        name: "alert_delay",
        sql: include_str!("../../../migrations/0003_alert_delay.sql"),
    },
    Migration {
        version: 4,
        name: "review_accounts",
        sql: include_str!("../../../migrations/0004_review_accounts.sql"),
    },
    Migration {
        version: 5,
        name: "offset_generation",
        sql: include_str!("../../../migrations/0005_offset_generation.sql"),
    },
    Migration {
        version: 6,
        name: "latency_split",
        sql: include_str!("../../../migrations/0006_latency_split.sql"),
    },
    Migration {
        version: 7,
        name: "cases",
        sql: include_str!("../../../migrations/0007_cases.sql"),
    },
    Migration {
        version: 8,
        name: "case_review",
        sql: include_str!("../../../migrations/0008_case_review.sql"),
    },
    Migration {
        version: 9,
        name: "alert_json_text",
        sql: include_str!("../../../migrations/0009_alert_json_text.sql"),
    },
];

/// A migration recorded in `schema_migrations`.
#[derive(Debug, Clone, PartialEq)]
pub struct AppliedMigration {
    /// Its version.
    pub version: i32,
    /// Its name.
    pub name: String,
    /// SHA-256 of its SQL when applied.
    pub checksum: String,
    /// When it was applied.
    pub applied_at: DateTime<Utc>,
}

/// Key of the advisory lock that serializes migrations across processes
/// (any fixed number; this is "stockano" in ASCII).
const LOCK_KEY: i64 = 0x73746f636b616e6f;

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)";

/// Applies the migrations of [`MIGRATIONS`] not yet applied, each in its own
/// transaction, and returns their names (`0001_init`), empty when the schema
/// is up to date. Safe to run from several processes at once: each
/// transaction takes a transaction-level advisory lock first, so one applies
/// while the others wait and then find nothing to do. Fails with
/// [`DbError::ChecksumMismatch`] when an applied migration differs from the
/// embedded one; migrations applied by a newer binary are left alone.
pub async fn migrate(client: &mut Client) -> Result<Vec<String>, DbError> {
    let mut applied_now = Vec::new();
    loop {
        let tx = client
            .transaction()
            .await
            .map_err(DbError::query("migrate: begin"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
            .await
            .map_err(DbError::query("migrate: advisory lock"))?;
        tx.batch_execute(CREATE_TABLE)
            .await
            .map_err(DbError::query("migrate: create schema_migrations"))?;
        let applied = read_applied(&tx).await?;
        check_checksums(&applied)?;
        let Some(next) = MIGRATIONS
            .iter()
            .find(|m| !applied.iter().any(|a| a.version == m.version))
        else {
            tx.commit()
                .await
                .map_err(DbError::query("migrate: commit"))?;
            break;
        };
        let label = format!("{:04}_{}", next.version, next.name);
        tx.batch_execute(next.sql)
            .await
            .map_err(DbError::query(format!("migration {label}")))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&next.version, &next.name, &next.checksum()],
        )
        .await
        .map_err(DbError::query(format!(
            "migration {label}: record in schema_migrations"
        )))?;
        tx.commit()
            .await
            .map_err(DbError::query(format!("migration {label}: commit")))?;
        tracing::info!("applied migration {label}");
        applied_now.push(label);
    }
    Ok(applied_now)
}

/// The migrations recorded in `schema_migrations`, by version; empty when
/// the table does not exist (nothing was ever migrated). Creates nothing.
pub async fn applied_migrations(client: &Client) -> Result<Vec<AppliedMigration>, DbError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
        .await
        .map_err(DbError::query("look for schema_migrations"))?
        .get(0);
    if !exists {
        return Ok(Vec::new());
    }
    read_applied(client).await
}

async fn read_applied(
    client: &impl tokio_postgres::GenericClient,
) -> Result<Vec<AppliedMigration>, DbError> {
    let rows = client
        .query(
            "SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .map_err(DbError::query("read schema_migrations"))?;
    Ok(rows
        .iter()
        .map(|r| AppliedMigration {
            version: r.get(0),
            name: r.get(1),
            checksum: r.get(2),
            applied_at: r.get(3),
        })
        .collect())
}

fn check_checksums(applied: &[AppliedMigration]) -> Result<(), DbError> {
    for a in applied {
        match MIGRATIONS.iter().find(|m| m.version == a.version) {
            Some(m) if m.checksum() != a.checksum => {
                return Err(DbError::ChecksumMismatch {
                    version: a.version,
                    name: a.name.clone(),
                    applied: a.checksum.clone(),
                    embedded: m.checksum(),
                });
            }
            Some(_) => {}
            None => tracing::warn!(
                "schema_migrations has migration {} ({}) that this binary does not know: \
                 the database was migrated by a newer version",
                a.version,
                a.name
            ),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1, "{}", m.name);
            assert!(!m.sql.trim().is_empty());
            assert_eq!(m.checksum().len(), 64);
        }
    }
}
