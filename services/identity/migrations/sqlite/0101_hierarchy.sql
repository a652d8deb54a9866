-- Hierarchies between customers of different kinds (household -> person, account -> account,
-- account -> site, account -> contact, site -> contact). Links never merge anything.
CREATE TABLE hierarchy_links (
    child_id    TEXT NOT NULL,             -- the child's customer id when linked
    parent_kind TEXT NOT NULL,             -- at most one parent of each kind per child
    parent_id   TEXT NOT NULL,             -- the parent's customer id when linked
    role        TEXT NOT NULL DEFAULT '',
    source      TEXT NOT NULL DEFAULT '',
    event_id    TEXT NOT NULL DEFAULT '',
    actor       TEXT NOT NULL DEFAULT '',
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (child_id, parent_kind)
);
CREATE INDEX hierarchy_links_parent ON hierarchy_links (parent_id, child_id);

-- Every link, move and unlink with who asked for it.
CREATE TABLE hierarchy_changes (
    id          TEXT PRIMARY KEY,
    action      TEXT NOT NULL,             -- link | unlink
    child_id    TEXT NOT NULL,
    parent_id   TEXT NOT NULL,
    previous_parent_id TEXT NOT NULL DEFAULT '',
    role        TEXT NOT NULL DEFAULT '',
    source      TEXT NOT NULL DEFAULT '',
    event_id    TEXT NOT NULL DEFAULT '',
    actor       TEXT NOT NULL DEFAULT '',
    created_at  BIGINT NOT NULL
);
CREATE INDEX hierarchy_changes_child ON hierarchy_changes (child_id, created_at);
