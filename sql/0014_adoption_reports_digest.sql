-- The sha256 of the reports (held, versions, processes, app_process_ids) each adoption row
-- was written from, as kmsd.domain.watch.reports_digest computes it. An agent whose reports
-- have not changed sends only this digest; a poll whose digest matches refreshes the row's
-- liveness and keeps its reports. NULL (rows from before, or written by an older replica
-- that leaves it alone) matches no digest, so such an agent is asked for its reports again.
ALTER TABLE adoption ADD COLUMN reports_digest text;
