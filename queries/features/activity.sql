-- name: activity
-- description: How busy the symbol is: tick_rate_1m = ticks in the trailing
--   minute; burst_ratio = ticks in the trailing 10 seconds against the
--   trailing 5 minutes' rate per 10 seconds (quote stuffing, bursts).
SELECT symbol, ts, seq,
       CAST(count(price) OVER w1m AS DOUBLE) AS tick_rate_1m,
       CAST(count(price) OVER w10s AS DOUBLE) / (CAST(count(price) OVER w5m AS DOUBLE) / 30.0) AS burst_ratio
FROM ticks
WINDOW w10s AS (PARTITION BY symbol ORDER BY ts RANGE BETWEEN INTERVAL '10 seconds' PRECEDING AND CURRENT ROW),
       w1m AS (PARTITION BY symbol ORDER BY ts RANGE BETWEEN INTERVAL '1 minute' PRECEDING AND CURRENT ROW),
       w5m AS (PARTITION BY symbol ORDER BY ts RANGE BETWEEN INTERVAL '5 minutes' PRECEDING AND CURRENT ROW)
