-- name: zscore_4
-- description: The Python prototype's rule: the price or the volume more
--   than 4 sample standard deviations from its trailing 30-minute mean. The
--   score is the larger |z|; a tick alerts at 4 or more.
-- threshold: 4
SELECT symbol, ts, seq,
       greatest(abs(price_z_30m), abs(volume_z_30m)) AS score,
       CASE WHEN abs(price_z_30m) >= coalesce(abs(volume_z_30m), 0)
            THEN 'price |z| ' || round(abs(price_z_30m), 2) || ' over 30 min'
            ELSE 'volume |z| ' || round(abs(volume_z_30m), 2) || ' over 30 min'
       END AS reason
FROM features
