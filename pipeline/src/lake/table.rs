//! What the lake knows about each table: schema, the column its date
//! partitions come from, and the key its files are sorted by.

use arrow::datatypes::SchemaRef;

use crate::labels::{self, label_schema};
use crate::tick::{col, tick_schema};

/// The description of a lake table.
#[derive(Debug, Clone)]
pub struct TableSpec {
    /// Folder name under the lake root, and the SQL table name.
    pub name: String,
    /// Schema of the files (without the `date` partition column).
    pub schema: SchemaRef,
    /// Timestamp column whose UTC date picks the `date=` partition.
    pub partition_ts: &'static str,
    /// Columns every file is sorted by, in order.
    pub sort_by: Vec<&'static str>,
    /// A Hive partition column above `date` (`name/<col>=<value>/date=.../`),
    /// read from the folder names; writers append to the sub-table
    /// `name/<col>=<value>` (see [`TableSpec::sub_table`]).
    pub outer_partition: Option<&'static str>,
}

/// Name of the Hive partition column that every lake table carries.
pub const DATE_COLUMN: &str = "date";

impl TableSpec {
    /// The `ticks` table, sorted by the tick key.
    pub fn ticks() -> Self {
        Self {
            name: "ticks".into(),
            schema: tick_schema(),
            partition_ts: col::TS,
            sort_by: vec![col::SYMBOL, col::TS, col::SEQ],
            outer_partition: None,
        }
    }

    /// The `labels` table, sorted by symbol and start.
    pub fn labels() -> Self {
        Self {
            name: "labels".into(),
            schema: label_schema(),
            partition_ts: labels::col::START_TS,
            sort_by: vec![
                labels::col::SYMBOL,
                labels::col::START_TS,
                labels::col::END_TS,
                labels::col::KIND,
            ],
            outer_partition: None,
        }
    }

    /// The `decoys` table: normal events that look like manipulation (news,
    /// market shocks and swings, index rebalances), written by `simulate` in the
    /// `labels` schema so that false alarms can be told apart by cause.
    /// Never used for training.
    pub fn decoys() -> Self {
        Self {
            name: "decoys".into(),
            ..Self::labels()
        }
    }

    /// The `amendments` table: what live feeds said about ticks they had
    /// sent (corrections, cancels, revised bars), by the amended tick's day.
    pub fn amendments() -> Self {
        use crate::sources::feed::amend_col;
        Self {
            name: "amendments".into(),
            schema: crate::sources::feed::amendment_schema(),
            partition_ts: amend_col::TS,
            sort_by: vec![amend_col::SYMBOL, amend_col::TS, amend_col::KIND],
            outer_partition: None,
        }
    }

    /// The `profiles` table: per symbol and minute of the exchange's day,
    /// the trailing days' typical volume, activity and move, by the day it
    /// is for (see [`crate::features::profiles`]).
    pub fn profiles() -> Self {
        use crate::features::profiles::{profile_col, profile_schema};
        Self {
            name: "profiles".into(),
            schema: profile_schema(),
            partition_ts: profile_col::TS,
            sort_by: vec![profile_col::SYMBOL, profile_col::MINUTE],
            outer_partition: None,
        }
    }

    /// The `minute_stats` table: per day, symbol and minute of the
    /// exchange's day, the volume, tick count and |return| of the minute,
    /// from which the [`profiles`](Self::profiles) are medians.
    pub fn minute_stats() -> Self {
        use crate::features::profiles::{minute_col, minute_stats_schema};
        Self {
            name: "minute_stats".into(),
            schema: minute_stats_schema(),
            partition_ts: minute_col::TS,
            sort_by: vec![minute_col::SYMBOL, minute_col::MINUTE],
            outer_partition: None,
        }
    }

    /// The `market` table: per one-minute bucket and symbol, the symbol's
    /// move and volume with the bucket's cross-section of all symbols (see
    /// [`crate::features::market`]), by the bucket's day.
    pub fn market() -> Self {
        use crate::features::market::{market_col, market_schema};
        Self {
            name: "market".into(),
            schema: market_schema(),
            partition_ts: market_col::TS,
            sort_by: vec![market_col::SYMBOL, market_col::TS],
            outer_partition: None,
        }
    }

    /// The `betas` table: per day and symbol, the symbol's beta to the
    /// market over the trailing dates (see [`crate::features::market`]).
    pub fn betas() -> Self {
        use crate::features::market::{beta_col, betas_schema};
        Self {
            name: "betas".into(),
            schema: betas_schema(),
            partition_ts: beta_col::TS,
            sort_by: vec![beta_col::SYMBOL],
            outer_partition: None,
        }
    }

    /// The `symbols` reference table (exchange, time zone, session per
    /// symbol), partitioned by the date each row became valid.
    pub fn symbols() -> Self {
        Self {
            name: "symbols".into(),
            schema: crate::symbols::symbol_schema(),
            partition_ts: crate::symbols::col::LISTED,
            sort_by: vec![crate::symbols::col::SYMBOL],
            outer_partition: None,
        }
    }

    /// The `scores` table: one row per scored tick and detector, under
    /// `scores/model_version=<version>/date=.../`.
    pub fn scores() -> Self {
        Self {
            name: "scores".into(),
            schema: crate::model::score::scores_schema(),
            partition_ts: col::TS,
            sort_by: vec![col::SYMBOL, col::TS, col::SEQ],
            outer_partition: Some(crate::model::score::col::MODEL_VERSION),
        }
    }

    /// The `alerts` table: the `scores` rows of alerts raised by the
    /// streaming executor, under `alerts/model_version=<version>/date=.../`.
    pub fn alerts() -> Self {
        Self {
            name: "alerts".into(),
            ..Self::scores()
        }
    }

    /// The `cases` table: the cases a model's `score` run opened, under
    /// `cases/model_version=<version>/date=<start date>/`.
    pub fn cases() -> Self {
        use crate::model::case_table::{cases_schema, col as case};
        Self {
            name: "cases".into(),
            schema: cases_schema(),
            partition_ts: case::START_TS,
            sort_by: vec![case::SYMBOL, case::START_TS],
            outer_partition: Some(crate::model::score::col::MODEL_VERSION),
        }
    }

    /// The folder of one value of the outer partition, as a table of its
    /// own (what an [`Appender`](super::Appender) writes to).
    pub fn sub_table(&self, value: &str) -> Self {
        match self.outer_partition {
            Some(c) => Self {
                name: format!("{}/{c}={value}", self.name),
                outer_partition: None,
                ..self.clone()
            },
            None => self.clone(),
        }
    }

    /// The tables every session registers.
    pub fn standard() -> Vec<Self> {
        vec![
            Self::ticks(),
            Self::labels(),
            Self::decoys(),
            Self::symbols(),
            Self::scores(),
            Self::alerts(),
            Self::cases(),
            Self::amendments(),
            Self::profiles(),
            Self::minute_stats(),
            Self::market(),
            Self::betas(),
        ]
    }
}
