-- Passages keep where they sit in their document (`heading`: the heading path, joined by
-- " > ") and, once embedded, their vector (`embedding`: base64 of little-endian float32) and
-- the model that made it (`model`); a passage without a vector of the API's model is embedded
-- again when its knowledge base is next searched.
ALTER TABLE knowledge_chunks ADD COLUMN heading TEXT NOT NULL DEFAULT '';
ALTER TABLE knowledge_chunks ADD COLUMN embedding TEXT;
ALTER TABLE knowledge_chunks ADD COLUMN model TEXT;
