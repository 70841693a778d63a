-- Phone numbers (or SIP users) that SIP calls reach bots at. `name` holds the number: one
-- number routes to one bot across the whole platform, so the engine can resolve an INVITE's
-- Request-URI without knowing the organization.
CREATE TABLE phone_numbers (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs (id),
    name TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX phone_numbers_org ON phone_numbers (org_id, id);
CREATE UNIQUE INDEX phone_numbers_number ON phone_numbers (name);
