-- name: seasonality
-- description: The trailing minute against the same minute of the trailing
--   20 trading days (the `profiles` table: medians per symbol and minute of
--   the exchange's day, made from the days before this one). Heavy volume
--   into the close or a busy open is normal; the same at midday is not.
--   volume_vs_profile = volume of the trailing minute / the minute's median
--   volume; ticks_vs_profile = ticks of the trailing minute / the minute's
--   median tick count; move_vs_profile = |log return over the trailing
--   minute| / the minute's median |return|. NULL without a profile (the
--   first day, a minute never traded before) or when the median is 0.
WITH z AS (
    SELECT symbol, min(timezone) AS timezone FROM symbols GROUP BY symbol
), w AS (
    SELECT k.symbol, k.ts, k.seq,
           CAST(floor(session_minute(k.ts, coalesce(z.timezone, 'America/New_York'), '00:00')) AS INT) AS minute,
           sum(k.volume) OVER w1m AS volume_1m,
           CAST(count(k.price) OVER w1m AS DOUBLE) AS ticks_1m,
           abs(log_return(k.price, first_value(k.price) OVER w1m)) AS move_1m
    FROM ticks k LEFT JOIN z ON z.symbol = k.symbol
    WINDOW w1m AS (PARTITION BY k.symbol ORDER BY k.ts RANGE BETWEEN INTERVAL '1 minute' PRECEDING AND CURRENT ROW)
)
SELECT w.symbol, w.ts, w.seq,
       w.volume_1m / nullif(p.median_volume, 0.0) AS volume_vs_profile,
       w.ticks_1m / nullif(p.median_ticks, 0.0) AS ticks_vs_profile,
       w.move_1m / nullif(p.median_abs_return, 0.0) AS move_vs_profile
FROM w LEFT JOIN profiles p
  ON p.symbol = w.symbol AND p.minute = w.minute AND p.ts = date_trunc('day', w.ts)
