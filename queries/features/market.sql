-- name: market
-- description: The tick against the whole market at the same minute (the
--   `market` table, one row per one-minute bucket and symbol, made by
--   queries/market/buckets.sql from every symbol's ticks), so that a move
--   every symbol shares (a market shock, by each symbol's beta) is told
--   from one the symbol makes alone. Ticks are scored once their bucket is
--   closed. mkt_ret_1m = the median one-minute return over all symbols;
--   mkt_dispersion_1m = the median distance of their returns from it;
--   excess_ret_1m = the symbol's return in the bucket minus beta x the
--   market's mean return (beta: the `betas` table, the symbol's beta over
--   the trailing 20 dates); excess_move_1m = the same for this tick's price
--   against the bucket's open; rel_volume_vs_mkt = the symbol's volume
--   against its intraday profile, over the market's median of the same;
--   move_rank_1m = percent rank of the symbol's |return| among all symbols
--   in the bucket. NULL without a beta (a symbol's first dates) or a
--   profile.
SELECT k.symbol, k.ts, k.seq,
       m.ret_median AS mkt_ret_1m,
       m.ret_dispersion AS mkt_dispersion_1m,
       m.ret - b.beta * m.ret_mean AS excess_ret_1m,
       ln(k.price / m.open) - b.beta * m.ret_mean AS excess_move_1m,
       m.rel_volume / nullif(m.rel_volume_median, 0.0) AS rel_volume_vs_mkt,
       m.move_rank AS move_rank_1m
FROM ticks k
LEFT JOIN market m ON m.symbol = k.symbol AND m.ts = date_trunc('minute', k.ts)
LEFT JOIN betas b ON b.symbol = k.symbol AND b.ts = date_trunc('day', k.ts)
