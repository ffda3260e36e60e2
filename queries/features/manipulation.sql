-- name: manipulation
-- description: Signals of the manipulation kinds surveillance looks for.
--   imbalance_1m: mean quote-size imbalance over the trailing minute
--   (spoofing/layering lean on one side of the book). volume_share_5m: the
--   trailing 5 minutes' volume over the trailing 30 minutes' (bursts, wash
--   trading, pumps). range_5m: (max - min) / price over the trailing 5
--   minutes; with heavy volume and a tiny range the price is pinned (wash
--   trading). max_move_5m: distance of the price from the trailing 5-minute
--   mean in that window's stddevs (spikes). flow_imbalance_5m: tick-rule
--   signed volume over total volume in the trailing 5 minutes (one-sided
--   pressure: pumps, dumps). (Marking the close: see session.sql.)
WITH q AS (
    SELECT symbol, ts, seq, price, volume,
           CASE WHEN bid_size + ask_size > 0 THEN (bid_size - ask_size) / (bid_size + ask_size) END AS imbalance,
           signed_volume(price, lag(price) OVER (PARTITION BY symbol ORDER BY ts, seq), volume) AS signed_vol
    FROM ticks
)
SELECT symbol, ts, seq,
       avg(imbalance) OVER w1m AS imbalance_1m,
       sum(volume) OVER w5m / nullif(sum(volume) OVER w30m, 0) AS volume_share_5m,
       (max(price) OVER w5m - min(price) OVER w5m) / price AS range_5m,
       abs((price - avg(price) OVER w5m) / nullif(stddev_samp(price) OVER w5m, 0)) AS max_move_5m,
       sum(signed_vol) OVER w5m / nullif(sum(volume) OVER w5m, 0) AS flow_imbalance_5m
FROM q
WINDOW w1m AS (PARTITION BY symbol ORDER BY ts RANGE BETWEEN INTERVAL '1 minute' PRECEDING AND CURRENT ROW),
       w5m AS (PARTITION BY symbol ORDER BY ts RANGE BETWEEN INTERVAL '5 minutes' PRECEDING AND CURRENT ROW),
       w30m AS (PARTITION BY symbol ORDER BY ts RANGE BETWEEN INTERVAL '30 minutes' PRECEDING AND CURRENT ROW)
