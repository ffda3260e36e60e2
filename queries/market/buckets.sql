-- name: market
-- description: The market at each minute: per one-minute bucket (UTC) and
--   symbol that traded in it, the symbol's move and volume in the bucket,
--   with the cross-section of every symbol of the same exchange in the same
--   bucket (the `symbols` table; symbols without a row count as XNYS). The feature
--   files join it as the `market` table on (symbol, bucket). Backfill runs
--   it over each date's ticks of all symbols; the streaming market-context
--   stage runs it over a bucket's ticks once the bucket is closed. Every
--   aggregate depends only on the bucket's ticks, never on their order
--   (medians, ranks, exact sums), so both give the same bits.
--   open = the first open (bars) or price (trades) of the bucket;
--   ret = ln(last price / open); volume = Σ volume; ticks = their count;
--   rel_volume = volume / the minute's median volume of the symbol's
--   intraday profile; move_rank = percent rank of |ret| among the bucket's
--   symbols (0 = quietest, 1 = the largest move); symbols = symbols that
--   traded; ret_median, ret_mean = median and mean ret over them;
--   ret_dispersion = median |ret - ret_median|; rel_volume_median = the
--   median rel_volume.
WITH z AS (
    SELECT symbol, min(timezone) AS timezone, min(exchange) AS exchange FROM symbols GROUP BY symbol
), k AS (
    SELECT date_trunc('minute', t.ts) AS bucket, coalesce(z.exchange, 'XNYS') AS exchange,
           t.symbol, t.ts, t.seq, t.price, t.open, t.volume,
           CAST(floor(session_minute(date_trunc('minute', t.ts), coalesce(z.timezone, 'America/New_York'), '00:00')) AS INT) AS minute
    FROM ticks t LEFT JOIN z ON z.symbol = t.symbol
), s AS (
    SELECT bucket, exchange, symbol, minute,
           coalesce(first_value(open ORDER BY ts, seq), first_value(price ORDER BY ts, seq)) AS open,
           last_value(price ORDER BY ts, seq) AS close,
           exact_sum(volume) AS volume,
           count(*) AS ticks
    FROM k GROUP BY bucket, exchange, symbol, minute
), r AS (
    SELECT s.bucket, s.exchange, s.symbol, s.open, ln(s.close / s.open) AS ret, s.volume, s.ticks,
           s.volume / nullif(p.median_volume, 0.0) AS rel_volume
    FROM s LEFT JOIN profiles p
      ON p.symbol = s.symbol AND p.minute = s.minute AND p.ts = date_trunc('day', s.bucket)
), a AS (
    SELECT bucket, exchange, count(*) AS symbols, median(ret) AS ret_median,
           exact_mean(ret) AS ret_mean, median(rel_volume) AS rel_volume_median
    FROM r GROUP BY bucket, exchange
), d AS (
    SELECT r.bucket, r.exchange, median(abs(r.ret - a.ret_median)) AS ret_dispersion
    FROM r JOIN a ON a.bucket = r.bucket AND a.exchange = r.exchange
    GROUP BY r.bucket, r.exchange
)
SELECT r.bucket AS ts, r.symbol, r.ticks, r.open, r.ret, r.volume, r.rel_volume,
       percent_rank() OVER (PARTITION BY r.bucket, r.exchange ORDER BY abs(r.ret)) AS move_rank,
       a.symbols, a.ret_median, a.ret_mean, d.ret_dispersion, a.rel_volume_median
FROM r JOIN a ON a.bucket = r.bucket AND a.exchange = r.exchange
JOIN d ON d.bucket = r.bucket AND d.exchange = r.exchange
