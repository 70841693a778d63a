-- Bots' knowledge bases: documents people add, split into chunks the engine searches during a
-- call (`search_knowledge`). Deleting a bot or a document deletes its chunks.
CREATE TABLE knowledge_documents (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs (id),
    bot_id TEXT NOT NULL REFERENCES bots (id) ON DELETE CASCADE,
    title TEXT NOT NULL,
    bytes BIGINT NOT NULL,
    chunks BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX knowledge_documents_bot ON knowledge_documents (bot_id, id);

CREATE TABLE knowledge_chunks (
    document_id TEXT NOT NULL REFERENCES knowledge_documents (id) ON DELETE CASCADE,
    bot_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    text TEXT NOT NULL,
    PRIMARY KEY (document_id, seq)
);
CREATE INDEX knowledge_chunks_bot ON knowledge_chunks (bot_id);
