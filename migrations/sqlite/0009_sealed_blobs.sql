-- Contents of secret entries are sealed (XChaCha20-Poly1305, see control/src/secrets.rs);
-- `sealed` says which rows hold ciphertext.
ALTER TABLE blobs ADD COLUMN sealed INTEGER NOT NULL DEFAULT 0;
