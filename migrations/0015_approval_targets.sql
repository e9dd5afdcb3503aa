-- An approval records the shadows the change was approved to reach (JSON list of names,
-- sorted): a rollout to a different set of shadows needs a new approval. Approvals made
-- before this column (NULL) name no set and are taken for whatever is registered.
ALTER TABLE approvals ADD COLUMN shadows TEXT;
