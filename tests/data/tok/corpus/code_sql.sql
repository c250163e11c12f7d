CREATE TABLE IF NOT EXISTS requests (
    id          BIGSERIAL PRIMARY KEY,
    user_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    prompt_toks INTEGER CHECK (prompt_toks >= 0),
    created_at  TIMESTAMPTZ DEFAULT now()
);

SELECT u.name, COUNT(*) AS n, AVG(r.prompt_toks)::numeric(10,2) AS avg_toks
FROM requests r
JOIN users u ON u.id = r.user_id
WHERE r.created_at > now() - INTERVAL '7 days'
GROUP BY u.name
HAVING COUNT(*) > 10
ORDER BY n DESC
LIMIT 20;
