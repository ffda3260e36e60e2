-- name: zscores
-- description: Where price and volume stand against the symbol's trailing 30
--   minutes: (x - mean) / sample stddev (NULL when the stddev is 0 or
--   undefined), and the distance of the price from the 30-minute VWAP.
SELECT symbol, ts, seq,
       (volume - avg(volume) OVER w30m) / nullif(stddev_samp(volume) OVER w30m, 0) AS volume_z_30m,
       (price - avg(price) OVER w30m) / nullif(stddev_samp(price) OVER w30m, 0) AS price_z_30m,
       price / (sum(price * volume) OVER w30m / nullif(sum(volume) OVER w30m, 0)) - 1 AS vwap_dev_30m
FROM ticks
WINDOW w30m AS (PARTITION BY symbol ORDER BY ts RANGE BETWEEN INTERVAL '30 minutes' PRECEDING AND CURRENT ROW)
