-- Covering indexes for the console's busiest reads, so they never open a call's row (its
-- result body holds the transcript): a campaign's statistics (attempts by outcome, answered
-- durations, first-audio latencies) and an organization's analytics over a span of days.
-- With 10,000 calls each read was one row lookup per call: 107 ms and 68 ms a page.
CREATE INDEX calls_campaign_stats ON calls (campaign_id, outcome, status, answered_at, duration_ms, first_audio_ms);
CREATE INDEX calls_org_analytics ON calls (org_id, started_at, outcome, answered_at, first_audio_ms, turn_ms, cost_lines);
