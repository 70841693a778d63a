-- Product state: JSON documents with the columns that lists filter on.
CREATE TABLE bots (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs (id),
    name TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX bots_org ON bots (org_id, id);

CREATE TABLE ai_assistants (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs (id),
    name TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX ai_assistants_org ON ai_assistants (org_id, id);

CREATE TABLE load_balancers (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs (id),
    name TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX load_balancers_org ON load_balancers (org_id, id);

CREATE TABLE webhooks (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs (id),
    name TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX webhooks_org ON webhooks (org_id, id);

CREATE TABLE campaigns (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs (id),
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX campaigns_org ON campaigns (org_id, id);
CREATE INDEX campaigns_state ON campaigns (state);

CREATE TABLE contacts (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs (id),
    campaign_id TEXT NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    phone TEXT NOT NULL,
    name TEXT NOT NULL,
    time_zone TEXT,
    fields TEXT NOT NULL,
    status TEXT NOT NULL,
    disposition TEXT,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (campaign_id, phone)
);
CREATE INDEX contacts_campaign ON contacts (campaign_id, id);
CREATE INDEX contacts_due ON contacts (campaign_id, status, next_attempt_at);

CREATE TABLE dnc (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs (id),
    phone TEXT NOT NULL,
    note TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (org_id, phone)
);

CREATE TABLE settings (
    org_id TEXT PRIMARY KEY REFERENCES orgs (id),
    body TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
