-- name: zscores
-- description: Where price and volume stand against the symbol's trailing 30
--   minutes: (x - mean) / sample stddev (NULL when the stddev is 0 or
--   undefined), and the distance of the price from the 30-minute VWAP.
SELECT symbol, ts, seq,
       rolling_zscore(volume, ts, INTERVAL '30 minutes') OVER w AS volume_z_30m,
       rolling_zscore(price, ts, INTERVAL '30 minutes') OVER w AS price_z_30m,
       price / rolling_vwap(price, volume, ts, INTERVAL '30 minutes') OVER w - 1 AS vwap_dev_30m
FROM ticks
WINDOW w AS (PARTITION BY symbol ORDER BY ts, seq)
