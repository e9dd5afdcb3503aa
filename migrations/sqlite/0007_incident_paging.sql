-- The flapping count of an incident (other incidents of its shadow opened within the hour
-- before it) looks back by time: without this index it read every earlier incident of the
-- shadow, 60 ms per page at 100,000 incidents.
CREATE INDEX incidents_shadow_opened ON incidents (shadow, opened_at);
