-- name: session
-- description: Where the tick stands in its exchange's trading day, on the
--   exchange's clock (the `symbols` table; New York, 09:30-16:00, for
--   symbols not in it): tod_sin, tod_cos = time of day on the unit circle;
--   minutes_to_close = minutes left to the session's close (negative after
--   it); close_move_5m = the 5-minute log return inside the session's last
--   15 minutes (0 before; marking the close).
WITH s AS (
    SELECT symbol, min(timezone) AS timezone, min(session_close) AS session_close
    FROM symbols
    GROUP BY symbol
), t AS (
    SELECT k.symbol, k.ts, k.seq, k.price,
           coalesce(s.timezone, 'America/New_York') AS zone,
           -session_minute(k.ts, coalesce(s.timezone, 'America/New_York'), coalesce(s.session_close, '16:00')) AS minutes_to_close
    FROM ticks k LEFT JOIN s ON s.symbol = k.symbol
)
SELECT symbol, ts, seq,
       sin(2 * pi() * day_fraction(ts, zone)) AS tod_sin,
       cos(2 * pi() * day_fraction(ts, zone)) AS tod_cos,
       minutes_to_close,
       CASE WHEN minutes_to_close <= 15 THEN log_return(price, first_value(price) OVER w5m) ELSE 0.0 END AS close_move_5m
FROM t
WINDOW w5m AS (PARTITION BY symbol ORDER BY ts RANGE BETWEEN INTERVAL '5 minutes' PRECEDING AND CURRENT ROW)
