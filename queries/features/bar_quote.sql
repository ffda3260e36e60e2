-- name: bar_quote
-- description: Shape of the tick itself: range_ratio = (high - low) / price
--   for bars (NULL for trades), spread_bps = (ask - bid) / mid in basis
--   points (NULL without quotes), quote_imbalance = (bid_size - ask_size) /
--   (bid_size + ask_size) (NULL without sizes).
SELECT symbol, ts, seq,
       (high - low) / price AS range_ratio,
       CASE WHEN bid > 0 AND ask > 0 THEN (ask - bid) / ((ask + bid) / 2) * 10000 END AS spread_bps,
       CASE WHEN bid_size + ask_size > 0 THEN (bid_size - ask_size) / (bid_size + ask_size) END AS quote_imbalance
FROM ticks
