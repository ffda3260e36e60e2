//! `stockanomaly db`: the PostgreSQL schema (migrate, status).

use clap::{Args, Subcommand};

use super::shared::DbUrlArgs;
use super::UsageError;
use crate::sinks::postgres::{self, DbError, MIGRATIONS};

/// `stockanomaly db`.
#[derive(Debug, Args)]
#[command(after_long_help = "\
The detector stores alerts, dead letters, Kafka offsets and statistics in
PostgreSQL. `migrate` brings the schema up to date (safe to run again, and
from several processes at once); `status` lists the applied migrations.

TLS follows sslmode in the URL or PGSSLMODE as in libpq: disable, prefer
(default), require encrypt without checking the certificate unless
PGSSLROOTCERT names a CA file; PGSSLMODE=verify-full checks chain and host
name. The password comes from the URL or PGPASSWORD, set from a secret
store: never commit it.

Examples:
  DATABASE_URL=postgres://detector@db:5432/stockanomaly stockanomaly db migrate
  stockanomaly db status --database-url postgres://detector@db/stockanomaly")]
pub struct DbArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: DbCommand,
}

/// The `db` subcommands.
#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Apply the migrations not yet applied and print their names.
    Migrate(DbUrlArgs),
    /// List the applied and pending migrations.
    Status(DbUrlArgs),
}

pub(crate) async fn run(args: DbArgs) -> anyhow::Result<()> {
    match args.command {
        DbCommand::Migrate(a) => {
            let mut client = connect(&a.database_url).await?;
            let applied = postgres::migrate(&mut client).await?;
            if applied.is_empty() {
                println!("schema up to date ({} migrations)", MIGRATIONS.len());
            } else {
                for name in &applied {
                    println!("applied {name}");
                }
            }
        }
        DbCommand::Status(a) => {
            let client = connect(&a.database_url).await?;
            let applied = postgres::applied_migrations(&client).await?;
            if applied.is_empty() {
                println!("no migrations applied");
            }
            for m in &applied {
                println!(
                    "{:04}_{}  applied {}",
                    m.version,
                    m.name,
                    m.applied_at.format("%Y-%m-%d %H:%M:%S UTC")
                );
            }
            for m in MIGRATIONS
                .iter()
                .filter(|m| !applied.iter().any(|a| a.version == m.version))
            {
                println!("{:04}_{}  pending", m.version, m.name);
            }
        }
    }
    Ok(())
}

/// Connects, turning a malformed URL or TLS setting into a usage error
/// (exit status 2).
pub(crate) async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    match postgres::connect(url).await {
        Ok(c) => Ok(c),
        Err(e @ (DbError::InvalidUrl { .. } | DbError::Tls { .. })) => {
            Err(UsageError(e.to_string()).into())
        }
        Err(e) => Err(e.into()),
    }
}
