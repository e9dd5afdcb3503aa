-- Agents over HTTPS are trusted by the SHA-256 fingerprint of their certificate.
ALTER TABLE shadows ADD COLUMN tls_pin TEXT;
