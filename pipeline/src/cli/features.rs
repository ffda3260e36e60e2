//! `stockanomaly features list|check|explain`

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::features::DEFAULT_QUERIES;
use crate::lake::schema_session;

/// `stockanomaly features`.
#[derive(Debug, Args)]
pub struct FeaturesArgs {
    /// Folder of the SQL files: features/*.sql, market/*.sql (the market
    /// context) and rules/*.sql.
    #[arg(long, global = true, env = "STOCKANOMALY_QUERIES", default_value = DEFAULT_QUERIES, value_name = "DIR")]
    pub queries: PathBuf,

    /// What to do.
    #[command(subcommand)]
    pub command: FeaturesCommand,
}

/// `features` subcommands.
#[derive(Debug, Subcommand)]
pub enum FeaturesCommand {
    /// Print every feature, in model order, with its file.
    List,
    /// Validate the feature files; exit 2 with located messages when one is broken.
    Check,
    /// Show each file's plan and derived lookback.
    Explain,
}

pub(crate) async fn run(args: FeaturesArgs) -> anyhow::Result<()> {
    let catalog = super::shared::load_catalog(&args.queries).await?;
    match args.command {
        FeaturesCommand::List => {
            for f in catalog.files() {
                for name in &f.features {
                    println!("{name:<20} {}", f.path.display());
                }
            }
        }
        FeaturesCommand::Check => {
            println!(
                "ok: {} files, {} features, feature set {}, lookback {}, delay {} ticks",
                catalog.files().len(),
                catalog.feature_names().len(),
                catalog.hash(),
                catalog.lookback(),
                catalog.delay()
            );
            // Streaming computes each file incrementally when it can; the
            // others re-run their SQL over the held history (slower).
            let program = crate::features::incremental::Program::compile(&catalog);
            for n in program.not_incremental() {
                println!(
                    "not incremental: {n} (streaming recomputes this file over the held history)"
                );
            }
            println!(
                "streaming: {} of {} files incremental",
                catalog.files().len() - program.not_incremental().len(),
                catalog.files().len()
            );
        }
        FeaturesCommand::Explain => {
            let ctx = schema_session();
            for f in catalog.files() {
                println!("== {} ({})", f.name, f.path.display());
                if let Some(d) = &f.description {
                    println!("{d}");
                }
                println!("features: {}", f.features.join(", "));
                match f.lookback_override {
                    Some(o) => println!(
                        "lookback: {o} (header override; derived {})",
                        f.derived_lookback
                    ),
                    None => println!("lookback: {} (derived from the plan)", f.derived_lookback),
                }
                if f.delay > 0 || f.derived_ahead > 0 {
                    println!(
                        "delay: {} ticks (reads {} later ticks; scored once they arrive)",
                        f.delay, f.derived_ahead
                    );
                }
                let plan = ctx.state().create_logical_plan(&f.sql).await?;
                println!("{}\n", plan.display_indent());
            }
            println!(
                "feature set {}: lookback {}, delay {} ticks",
                catalog.hash(),
                catalog.lookback(),
                catalog.delay()
            );
        }
    }
    Ok(())
}
