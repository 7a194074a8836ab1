-- When kmsd last made sure the SM secret carries the tags the prefix-shaped host policy reads
-- (kmsd:app, kmsd:path, kmsd:name). NULL: not yet; the reconciler checks those (describe, tag
-- what is missing), so secrets created before kmsd wrote kmsd:app - or by an older replica
-- during a rolling upgrade - get it once, and new secrets cost one DescribeSecret each.
ALTER TABLE secrets ADD COLUMN sm_tags_checked_at timestamptz;
CREATE INDEX secrets_tags_unchecked_idx ON secrets (id)
    WHERE sm_tags_checked_at IS NULL AND kind <> 'datakey';
