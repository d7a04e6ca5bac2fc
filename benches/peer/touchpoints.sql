-- Touchpoint visits, sessions, exits and drop-offs of a canonical NDJSON file, computed by
-- DuckDB with window functions: the peer of `suite peer` (benches/src/bin/suite.rs), which
-- checks that these figures equal `journeyd replay`'s.
--
-- An independent reading of the definitions, not a port of the engine:
--   * touchpoints: config/rules.toml written out by hand as one CASE, first match wins
--     (`suite peer` fails when the rules and this CASE disagree on any visit count);
--   * sessions (docs/semantics.md §3): a customer's events in time order (equal times in
--     file order); a gap longer than session.gap (30 min) starts a new session;
--   * visits, sessions, exits, drop-offs (docs/semantics.md §8): events classified as the
--     touchpoint; sessions that touched it; sessions whose last classified event was it;
--     those exits in sessions that touched no goal (order_confirmed, deal_won).
-- What it leaves out, and checks instead: sessions reaching session.max_duration (24 h) are
-- counted in `long_sessions` (journeyd would split them; the suite fails if there are any),
-- and late events, duplicate ids and rejected records are checked on journeyd's side
-- (the suite fails unless all are zero).
--
-- Reads only the attributes the rules use (url, utm_medium, survey) as a struct: DuckDB
-- skips the rest of each record, as any columnar reader of JSON would be set up to.
-- `$path` is replaced with the file's path by touchpoints.py.

CREATE TEMP TABLE events AS
SELECT
    row_number() OVER () AS seq,
    customer_id,
    ts,
    CASE
        WHEN source = 'web' AND event = 'page_view'
             AND attributes.utm_medium IN ('cpc', 'display', 'paid_social') THEN 'ad_click'
        WHEN source = 'web' AND event = 'page_view'
             AND attributes.utm_medium IN ('social', 'organic_social') THEN 'social_visit'
        WHEN source = 'web' AND event = 'page_view'
             AND attributes.utm_medium = 'organic' THEN 'search_visit'
        WHEN source = 'web' AND event = 'page_view'
             AND starts_with(attributes.url, '/blog/') THEN 'blog_post'
        WHEN source = 'web' AND event = 'page_view'
             AND regexp_matches(attributes.url, '^/(landing|lp/.+)?$') THEN 'landing_page'
        WHEN source = 'web' AND event = 'page_view'
             AND starts_with(attributes.url, '/products/') THEN 'product_page'
        WHEN source = 'web' AND event = 'page_view'
             AND starts_with(attributes.url, '/compare') THEN 'compare'
        WHEN source = 'crm' AND event = 'lead_created' THEN 'lead_created'
        WHEN source = 'web' AND event = 'newsletter_signup' THEN 'newsletter_signup'
        WHEN source = 'web' AND event = 'add_to_cart' THEN 'add_to_cart'
        WHEN source = 'web' AND event = 'page_view' AND attributes.url = '/cart' THEN 'cart'
        WHEN source = 'web' AND event = 'checkout_started' THEN 'checkout'
        WHEN source = 'crm' AND event = 'sales_call' THEN 'sales_call'
        WHEN source = 'crm' AND event = 'quote_sent' THEN 'quote_sent'
        WHEN source = 'web' AND event = 'order_completed' THEN 'order_confirmed'
        WHEN source = 'crm' AND event = 'deal_won' THEN 'deal_won'
        WHEN source = 'service' AND event = 'ticket_opened' THEN 'ticket_opened'
        WHEN source = 'service' AND event = 'ticket_resolved' THEN 'ticket_resolved'
        WHEN source = 'web' AND event = 'login' THEN 'account_login'
        WHEN source = 'service' AND event = 'survey_answered'
             AND attributes.survey = 'nps' THEN 'nps_survey'
        WHEN source = 'web' AND event = 'review_submitted' THEN 'review'
        WHEN source = 'web' AND event = 'referral_sent' THEN 'referral'
    END AS tp
FROM read_json('$path',
    format = 'newline_delimited',
    columns = {
        customer_id: 'VARCHAR',
        ts: 'BIGINT',
        source: 'VARCHAR',
        event: 'VARCHAR',
        attributes: 'STRUCT(url VARCHAR, utm_medium VARCHAR, survey VARCHAR)'
    });

CREATE TEMP TABLE sessions AS
WITH ordered AS (
    SELECT *,
        row_number() OVER w AS pos,
        ts - lag(ts) OVER w AS gap
    FROM events
    WINDOW w AS (PARTITION BY customer_id ORDER BY ts, seq)
),
numbered AS (
    SELECT *,
        sum(CASE WHEN gap IS NULL OR gap > 30 * 60 * 1000 THEN 1 ELSE 0 END)
            OVER (PARTITION BY customer_id ORDER BY pos ROWS UNBOUNDED PRECEDING) AS sid
    FROM ordered
)
SELECT customer_id, sid, tp, pos, ts FROM numbered;

CREATE TEMP TABLE per_session AS
SELECT
    customer_id,
    sid,
    max(ts) - min(ts) AS span,
    arg_max(tp, pos) FILTER (WHERE tp IS NOT NULL) AS exit_tp,
    bool_or(tp IN ('order_confirmed', 'deal_won')) AS reached_goal
FROM sessions
GROUP BY customer_id, sid;

SELECT tp AS touchpoint, figure, n FROM (
    SELECT tp, 'visits' AS figure, count(*) AS n FROM events WHERE tp IS NOT NULL GROUP BY tp
    UNION ALL
    SELECT tp, 'sessions', count(*) FROM (
        SELECT DISTINCT customer_id, sid, tp FROM sessions WHERE tp IS NOT NULL
    ) GROUP BY tp
    UNION ALL
    SELECT exit_tp, 'exits', count(*) FROM per_session WHERE exit_tp IS NOT NULL GROUP BY exit_tp
    UNION ALL
    SELECT exit_tp, 'drop_offs', count(*) FROM per_session
        WHERE exit_tp IS NOT NULL AND NOT coalesce(reached_goal, false) GROUP BY exit_tp
    UNION ALL
    SELECT '(all)', 'long_sessions', count(*) FROM per_session WHERE span >= 24 * 3600 * 1000
    UNION ALL
    SELECT '(all)', 'events', count(*) FROM events
);
