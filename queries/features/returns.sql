-- name: returns
-- description: Log returns and short-horizon volatility, per symbol in event
--   time. ret_1 is the log return against the symbol's previous tick; ret_5m
--   against the first price of the trailing 5 minutes; vol_5m the sample
--   stddev of ret_1 over the trailing 5 minutes; ret_ewm_z the z-score of
--   ret_1 against its exponentially weighted mean and variance (half-life 20
--   ticks, truncated to the previous 200 ticks); drift_z_5m the t-statistic
--   of the trailing 5 minutes' drift: Σ ret_1 / (stddev(ret_1) × √n), large
--   when the price walks steadily one way (a pump's ramp, a push into the
--   close), of order 1 for noise and when one jump makes the move (news);
--   jump_30m the largest |ret_1| of the trailing 30 minutes in units of
--   their stddev: a permanent jump behind the tick (news, a market shock)
--   explains the heavy trading after it, which a burst or a pump lacks.
WITH r AS (
    SELECT symbol, ts, seq, price,
           log_return(price, lag(price) OVER (PARTITION BY symbol ORDER BY ts, seq)) AS ret_1
    FROM ticks
)
SELECT symbol, ts, seq,
       ret_1,
       log_return(price, first_value(price) OVER w5m) AS ret_5m,
       stddev_samp(ret_1) OVER w5m AS vol_5m,
       sum(ret_1) OVER w5m
           / nullif(stddev_samp(ret_1) OVER w5m * sqrt(CAST(count(ret_1) OVER w5m AS DOUBLE)), 0.0) AS drift_z_5m,
       ewm_zscore(ret_1, 20, 200) OVER (PARTITION BY symbol ORDER BY ts, seq) AS ret_ewm_z,
       max(abs(ret_1)) OVER w30m / nullif(stddev_samp(ret_1) OVER w30m, 0.0) AS jump_30m
FROM r
WINDOW w5m AS (PARTITION BY symbol ORDER BY ts RANGE BETWEEN INTERVAL '5 minutes' PRECEDING AND CURRENT ROW),
       w30m AS (PARTITION BY symbol ORDER BY ts RANGE BETWEEN INTERVAL '30 minutes' PRECEDING AND CURRENT ROW)
