//! A backfill's context tables made ahead of the chain that reads them.
//!
//! Per date, backfill makes the minute statistics (from the date's ticks),
//! the profiles (from earlier dates' minute statistics), the market
//! buckets (from the date's profiles) and the betas (from earlier dates'
//! buckets). Each stage needs only what earlier stages made for the same or
//! earlier dates, so each runs in a task of its own, a few dates ahead of
//! the next ([`Ahead`]): the stages share the cores instead of taking turns
//! on one.

use std::collections::VecDeque;
use std::future::Future;

use chrono::NaiveDate;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use arrow::array::RecordBatch;

use super::profiles::{
    profiles_done, write_minute_stats, write_profiles_cached, MinuteStatsCache, ProfileError,
};
use crate::lake::LakeRoot;

/// Dates a stage may run ahead of its reader: a little slack for uneven
/// dates, without running far ahead of a reader that failed.
const AHEAD: usize = 2;

/// One date's result, as a stage's task reports it.
type Report<T> = Result<(NaiveDate, T), ProfileError>;

/// The reporting end a stage's task is given.
#[derive(Debug)]
pub struct Made<T> {
    tx: mpsc::Sender<Report<T>>,
}

impl<T> Made<T> {
    /// Reports what the stage made of `date`; `false` when the task should
    /// stop (it failed, or nobody reads any more).
    pub async fn send(&self, date: NaiveDate, result: Result<T, ProfileError>) -> bool {
        let failed = result.is_err();
        self.tx.send(result.map(|t| (date, t))).await.is_ok() && !failed
    }

    /// Reports a failure after the last date (the reader's
    /// [`Ahead::finish`] returns it).
    pub async fn fail(&self, e: ProfileError) {
        // Nobody reading: nobody to tell.
        let _ = self.tx.send(Err(e)).await;
    }
}

/// The intraday profiles of `dates` (sorted), each date's in a stage ahead
/// of the reader: the profiles made, with the `date` column a session's
/// table has, or `None` where they were stored already (and not `force`d).
/// With `force` the minute statistics of every date are made again first
/// (its ticks may have grown), in a stage ahead of the profiles: a date's
/// profiles read only earlier dates' statistics.
pub fn profiles(root: &LakeRoot, dates: Vec<NaiveDate>, force: bool) -> Ahead<Option<RecordBatch>> {
    let mut stats = force.then(|| {
        let (root, dates) = (root.clone(), dates.clone());
        Ahead::start("minute_stats", dates.clone(), move |made| async move {
            for date in dates {
                let clock = std::time::Instant::now();
                let result = write_minute_stats(&root, date).await;
                let secs = clock.elapsed().as_secs_f64();
                tracing::debug!(%date, secs, "Minute statistics written.");
                if !made.send(date, result).await {
                    return;
                }
            }
        })
    });
    let root = root.clone();
    Ahead::start("profiles", dates.clone(), move |made| async move {
        let mut cache = MinuteStatsCache::default();
        for date in dates {
            let result = async {
                if let Some(s) = &mut stats {
                    s.made_before(date).await?;
                }
                if !force && profiles_done(&root, date).await {
                    return Ok(None);
                }
                let batch = write_profiles_cached(&root, date, &mut cache).await?;
                tracing::debug!(%date, rows = batch.num_rows(), "Intraday profiles written.");
                Ok(Some(batch))
            }
            .await;
            if !made.send(date, result).await {
                return;
            }
        }
        // The last date's statistics, which no profile of this run reads.
        if let Some(s) = stats {
            if let Err(e) = s.finish().await {
                made.fail(e).await;
            }
        }
    })
}

/// A stage running in its own task over a run of dates, in order; the
/// reader takes each date's result when it needs it.
#[derive(Debug)]
pub struct Ahead<T> {
    table: &'static str,
    /// Dates not yet taken, in order.
    pending: VecDeque<NaiveDate>,
    made: mpsc::Receiver<Report<T>>,
    task: JoinHandle<()>,
}

impl<T: Send + 'static> Ahead<T> {
    /// Starts `body` in a task of its own: it makes `table` for `dates`
    /// (sorted), reporting each through the [`Made`] it is given, in order.
    pub fn start<F, Fut>(table: &'static str, dates: Vec<NaiveDate>, body: F) -> Self
    where
        F: FnOnce(Made<T>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (tx, made) = mpsc::channel(AHEAD);
        let task = tokio::spawn(body(Made { tx }));
        Self {
            table,
            pending: dates.into(),
            made,
            task,
        }
    }

    /// What the stage made of `date`, waiting for it (the results of the
    /// dates before it are let go); `None` for a date not in its run.
    pub async fn take(&mut self, date: NaiveDate) -> Result<Option<T>, ProfileError> {
        while let Some(&next) = self.pending.front() {
            if next > date {
                break;
            }
            let made = self.next().await?;
            if next == date {
                return Ok(Some(made));
            }
        }
        Ok(None)
    }

    /// Waits until the stage has made every date before `date`.
    pub async fn made_before(&mut self, date: NaiveDate) -> Result<(), ProfileError> {
        while self.pending.front().is_some_and(|&d| d < date) {
            self.next().await?;
        }
        Ok(())
    }

    /// Waits until the stage has made every date and its task has ended,
    /// with the error it ended on, if any.
    pub async fn finish(mut self) -> Result<(), ProfileError> {
        while !self.pending.is_empty() {
            self.next().await?;
        }
        match self.made.recv().await {
            Some(Err(e)) => return Err(e),
            Some(Ok((date, _))) => return Err(self.stopped(date)),
            None => {}
        }
        match (&mut self.task).await {
            Ok(()) => Ok(()),
            Err(_) => Err(ProfileError::Stopped {
                table: self.table,
                date: None,
            }),
        }
    }

    /// The next pending date's result.
    async fn next(&mut self) -> Result<T, ProfileError> {
        let Some(expected) = self.pending.pop_front() else {
            return Err(ProfileError::Stopped {
                table: self.table,
                date: None,
            });
        };
        match self.made.recv().await {
            Some(Ok((date, t))) if date == expected => Ok(t),
            Some(Err(e)) => Err(e),
            _ => Err(self.stopped(expected)),
        }
    }

    fn stopped(&self, date: NaiveDate) -> ProfileError {
        ProfileError::Stopped {
            table: self.table,
            date: Some(date),
        }
    }
}

impl<T> Drop for Ahead<T> {
    fn drop(&mut self) {
        // A backfill that failed elsewhere leaves no task behind it.
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dates(n: u32) -> Vec<NaiveDate> {
        (1..=n)
            .filter_map(|d| NaiveDate::from_ymd_opt(2024, 1, d))
            .collect()
    }

    #[tokio::test]
    async fn results_come_by_date_and_errors_stop_the_stage() {
        let all = dates(5);
        let run = all.clone();
        let mut stage = Ahead::start("t", all.clone(), move |made| async move {
            for d in run {
                let result = if d == NaiveDate::from_ymd_opt(2024, 1, 4).unwrap() {
                    Err(ProfileError::Stopped {
                        table: "t",
                        date: Some(d),
                    })
                } else {
                    Ok(d.to_string())
                };
                if !made.send(d, result).await {
                    return;
                }
            }
        });
        stage.made_before(all[1]).await.unwrap();
        assert_eq!(
            stage.take(all[2]).await.unwrap().as_deref(),
            Some("2024-01-03")
        );
        // A date already passed is not in the run any more.
        assert_eq!(stage.take(all[1]).await.unwrap(), None);
        let err = stage.take(all[4]).await.unwrap_err().to_string();
        assert!(err.contains("2024-01-04"), "{err}");
    }

    #[tokio::test]
    async fn a_stage_that_ends_early_is_an_error_not_a_hang() {
        let all = dates(3);
        let first = all[0];
        let stage = Ahead::start("minute_stats", all, move |made| async move {
            made.send(first, Ok(())).await;
        });
        let err = stage.finish().await.unwrap_err().to_string();
        assert!(
            err.contains("minute_stats") && err.contains("2024-01-02"),
            "{err}"
        );
    }
}
