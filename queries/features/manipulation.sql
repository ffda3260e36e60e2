-- name: manipulation
-- description: Signals of the manipulation kinds surveillance looks for.
--   imbalance_1m: mean quote-size imbalance over the trailing minute
--   (spoofing/layering lean on one side of the book). volume_share_5m: the
--   trailing 5 minutes' volume over the trailing 30 minutes' (bursts, wash
--   trading, pumps). range_5m: (max - min) / price over the trailing 5
--   minutes; with heavy volume and a tiny range the price is pinned (wash
--   trading). max_move_5m: largest distance of the price from the trailing
--   5-minute mean in that window's stddevs (spikes, marking the close).
WITH q AS (
    SELECT symbol, ts, seq, price, volume,
           CASE WHEN bid_size + ask_size > 0 THEN (bid_size - ask_size) / (bid_size + ask_size) END AS imbalance
    FROM ticks
)
SELECT symbol, ts, seq,
       rolling_mean(imbalance, ts, INTERVAL '1 minute') OVER w AS imbalance_1m,
       rolling_sum(volume, ts, INTERVAL '5 minutes') OVER w
         / rolling_sum(volume, ts, INTERVAL '30 minutes') OVER w AS volume_share_5m,
       (rolling_max(price, ts, INTERVAL '5 minutes') OVER w
         - rolling_min(price, ts, INTERVAL '5 minutes') OVER w) / price AS range_5m,
       abs(rolling_zscore(price, ts, INTERVAL '5 minutes') OVER w) AS max_move_5m
FROM q
WINDOW w AS (PARTITION BY symbol ORDER BY ts, seq)
