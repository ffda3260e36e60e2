-- name: confirm
-- description: Delayed confirmation: what the next 5 ticks of the symbol
--   did after this one, so that a spike that snaps back (manipulation) is
--   told from a jump that holds (news). Ticks of this pack are scored once
--   5 later ticks of their symbol have arrived. ret_next_5 = log return
--   from this tick's price to the price 5 ticks later; retained_5 = the
--   share of this tick's move (from the previous tick's price) still there
--   5 ticks later: about 1 when it holds, about 0 when it reverted (NULL
--   without a move, or before 5 later ticks exist at the end of the data).
-- delay: 5 ticks
SELECT symbol, ts, seq,
       log_return(lead(price, 5) OVER w, price) AS ret_next_5,
       (lead(price, 5) OVER w - lag(price, 1) OVER w)
           / nullif(price - lag(price, 1) OVER w, 0.0) AS retained_5
FROM ticks
WINDOW w AS (PARTITION BY symbol ORDER BY ts, seq)
