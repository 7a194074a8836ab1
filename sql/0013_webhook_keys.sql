-- Webhook signing keys are no longer stored: each is derived when needed with KMS GenerateMac
-- (kmsd.services.webhook_keys) from the KMS HMAC key named by KMSD_WEBHOOK_MAC_KEY, the
-- application's path and a random salt. The row keeps the salt and the key that was used,
-- neither of which signs anything without KMS.
--
-- Hooks set before this migration keep their stored key (hmac_key) and are signed with it
-- until they are set again, so receivers keep verifying; setting a hook clears hmac_key.
-- Such rows are the only ones left that a database dump could forge events with:
--     SELECT app_path FROM webhooks WHERE hmac_key IS NOT NULL;
ALTER TABLE webhooks ALTER COLUMN hmac_key DROP NOT NULL;
ALTER TABLE webhooks ADD COLUMN mac_key_id text;
ALTER TABLE webhooks ADD COLUMN mac_salt bytea;
ALTER TABLE webhooks ADD CONSTRAINT webhooks_one_key CHECK (
    (hmac_key IS NOT NULL AND mac_key_id IS NULL AND mac_salt IS NULL)
    OR (hmac_key IS NULL AND mac_key_id IS NOT NULL AND mac_salt IS NOT NULL)
);
