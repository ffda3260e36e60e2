-- name: returns
-- description: Log returns and short-horizon volatility, per symbol in event
--   time. ret_1 is the log return against the symbol's previous tick; ret_5m
--   against the first price of the trailing 5 minutes; vol_5m the sample
--   stddev of ret_1 over the trailing 5 minutes; ret_ewm_z the z-score of
--   ret_1 against its exponentially weighted mean and variance (half-life 20
--   ticks, truncated to the previous 200 ticks).
WITH r AS (
    SELECT symbol, ts, seq, price,
           log_return(price, lag(price) OVER (PARTITION BY symbol ORDER BY ts, seq)) AS ret_1
    FROM ticks
)
SELECT symbol, ts, seq,
       ret_1,
       log_return(price, first_value(price) OVER w5m) AS ret_5m,
       stddev_samp(ret_1) OVER w5m AS vol_5m,
       ewm_zscore(ret_1, 20, 200) OVER (PARTITION BY symbol ORDER BY ts, seq) AS ret_ewm_z
FROM r
WINDOW w5m AS (PARTITION BY symbol ORDER BY ts RANGE BETWEEN INTERVAL '5 minutes' PRECEDING AND CURRENT ROW)
