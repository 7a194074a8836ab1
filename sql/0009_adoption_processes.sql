-- Which versions each application process last read from an agent, as the agent reports it:
-- {"<pid>": {"<secret name>": "<version id>"}}. A rotation can then name the process, not only
-- the host, that still reads an old version.
ALTER TABLE adoption ADD COLUMN processes jsonb NOT NULL DEFAULT '{}'::jsonb;
