//! `stockanomaly users`: the review app's accounts.

use std::io::{BufRead, IsTerminal};

use clap::{Args, Subcommand};

use super::shared::DbUrlArgs;
use super::UsageError;
use crate::review::auth::{
    self, add_user, check_password_rules, hash_password, list_users, set_disabled, set_password,
    AuthError, Role,
};
use crate::sinks::postgres;

/// Where a new password is read from (never a flag: command lines are
/// visible to every user of the machine).
const PASSWORD_VAR: &str = "STOCKANOMALY_PASSWORD";

/// `stockanomaly users`.
#[derive(Debug, Args)]
#[command(after_long_help = "\
Accounts of the review app (`stockanomaly serve --auth accounts`, the
default). Viewers read the queue and alerts; analysts and admins also record
verdicts, which become training labels. Passwords (at least 10 characters)
are stored as Argon2id hashes; they are read from STOCKANOMALY_PASSWORD, or
else from standard input (asked twice, without echo, on a terminal). Never
put one on the command line.

Run as the database's owner (the migrations' role): the review server's own
role can read accounts but not change them. `disable` and `passwd` end the
user's sessions at once.

Examples:
  stockanomaly users add ana --role analyst
  printf '%s\\n' \"$PW\" | stockanomaly users add grafana-bot --role viewer
  stockanomaly users list
  stockanomaly users passwd ana
  stockanomaly users disable ana")]
pub struct UsersArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: UsersCommand,
}

/// The `users` subcommands.
#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Add an account.
    Add(AddArgs),
    /// List the accounts (name, role, state, sessions).
    List(DbUrlArgs),
    /// Disable an account and end its sessions.
    Disable(NameArgs),
    /// Enable a disabled account.
    Enable(NameArgs),
    /// Set an account's password (and end its sessions).
    Passwd(NameArgs),
}

/// `users add`.
#[derive(Debug, Args)]
pub struct AddArgs {
    /// The user's name (1 to 64 of A-Z a-z 0-9 . _ @ -): what their
    /// verdicts record.
    pub name: String,

    /// What the user may do.
    #[arg(long, env = "STOCKANOMALY_ROLE", value_enum)]
    pub role: Role,

    /// Add the account without a password: it cannot sign in, but gives
    /// its role to the name an SSO proxy asserts (`--auth trusted-header`).
    #[arg(long, env = "STOCKANOMALY_NO_PASSWORD")]
    pub no_password: bool,

    /// Where the database is.
    #[command(flatten)]
    pub db: DbUrlArgs,
}

/// A subcommand naming one account.
#[derive(Debug, Args)]
pub struct NameArgs {
    /// The user's name.
    pub name: String,

    /// Where the database is.
    #[command(flatten)]
    pub db: DbUrlArgs,
}

/// The new password: `STOCKANOMALY_PASSWORD`, else standard input (a prompt
/// without echo, asked twice, on a terminal; the first line otherwise).
fn read_password(name: &str) -> anyhow::Result<String> {
    if let Some(pw) = std::env::var_os(PASSWORD_VAR) {
        return pw
            .into_string()
            .map_err(|_| UsageError(format!("{PASSWORD_VAR} is not valid UTF-8")).into());
    }
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("Password for {name}: "))?;
        check_password_rules(&first).map_err(|e| UsageError(e.to_string()))?;
        let again = rpassword::prompt_password("Again: ")?;
        if first != again {
            return Err(UsageError("the passwords differ".into()).into());
        }
        return Ok(first);
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let pw = line.trim_end_matches(['\n', '\r']).to_owned();
    if pw.is_empty() {
        return Err(UsageError(format!(
            "no password: set {PASSWORD_VAR} or write it on standard input"
        ))
        .into());
    }
    Ok(pw)
}

/// A new password's hash (rule violations are usage errors).
fn new_hash(name: &str) -> anyhow::Result<String> {
    let pw = read_password(name)?;
    hash_password(&pw).map_err(|e| match e {
        AuthError::BadPassword(_) => UsageError(e.to_string()).into(),
        other => anyhow::Error::new(other),
    })
}

/// Account mistakes (a bad or taken name, an unknown user) exit 2.
fn usage(e: AuthError) -> anyhow::Error {
    match e {
        AuthError::BadName(_)
        | AuthError::UserExists(_)
        | AuthError::UnknownUser(_)
        | AuthError::NotMigrated => UsageError(e.to_string()).into(),
        other => anyhow::Error::new(other),
    }
}

pub(crate) async fn run(args: UsersArgs) -> anyhow::Result<()> {
    match args.command {
        UsersCommand::Add(a) => {
            auth::check_name(&a.name).map_err(usage)?;
            let client = postgres::connect(&a.db.database_url).await?;
            // Before asking for a password that would be thrown away.
            if auth::find_user(&client, &a.name)
                .await
                .map_err(usage)?
                .is_some()
            {
                return Err(usage(AuthError::UserExists(a.name)));
            }
            let hash = if a.no_password {
                None
            } else {
                Some(new_hash(&a.name)?)
            };
            add_user(&client, &a.name, a.role, hash.as_deref())
                .await
                .map_err(usage)?;
            let how = if a.no_password {
                " without a password (for --auth trusted-header)"
            } else {
                ""
            };
            println!("added {} ({}){how}", a.name, a.role);
        }
        UsersCommand::List(db) => {
            let client = postgres::connect(&db.database_url).await?;
            let users = list_users(&client).await.map_err(usage)?;
            if users.is_empty() {
                println!("no users: add one with `stockanomaly users add NAME --role analyst`");
            } else {
                println!(
                    "{:<32} {:<8} {:<9} {:<8} {:<20} sessions",
                    "name", "role", "state", "password", "created (UTC)"
                );
            }
            for u in users {
                println!(
                    "{:<32} {:<8} {:<9} {:<8} {:<20} {}",
                    u.name,
                    u.role.as_str(),
                    if u.disabled { "disabled" } else { "active" },
                    if u.has_password { "set" } else { "none" },
                    u.created_at.format("%Y-%m-%d %H:%M:%S"),
                    u.sessions
                );
            }
        }
        UsersCommand::Disable(a) => {
            let client = postgres::connect(&a.db.database_url).await?;
            set_disabled(&client, &a.name, true).await.map_err(usage)?;
            println!("disabled {} (their sessions ended)", a.name);
        }
        UsersCommand::Enable(a) => {
            let client = postgres::connect(&a.db.database_url).await?;
            set_disabled(&client, &a.name, false).await.map_err(usage)?;
            println!("enabled {}", a.name);
        }
        UsersCommand::Passwd(a) => {
            let client = postgres::connect(&a.db.database_url).await?;
            if auth::find_user(&client, &a.name)
                .await
                .map_err(usage)?
                .is_none()
            {
                return Err(usage(AuthError::UnknownUser(a.name)));
            }
            let hash = new_hash(&a.name)?;
            set_password(&client, &a.name, &hash).await.map_err(usage)?;
            println!("changed the password of {} (their sessions ended)", a.name);
        }
    }
    Ok(())
}
