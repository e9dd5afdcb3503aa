-- An approval records the shadows the change was approved to reach (JSON list of names,
-- sorted): a rollout to a different set of shadows needs a new approval. Approvals made
-- before this column (NULL) name no set and are taken for whatever is registered.
ALTER TABLE approvals ADD COLUMN shadows TEXT;
-- The same set by identity: a digest over each shadow's name, registration time, driver
-- and address, so a shadow removed and registered again elsewhere under its old name is
-- another target.
ALTER TABLE approvals ADD COLUMN targets_digest TEXT;
