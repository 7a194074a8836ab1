-- KMS data keys: a secret of kind 'datakey' has no SM secret; each version is a ciphertext
-- blob from GenerateDataKeyWithoutPlaintext under the secret's CMK (never a plaintext key).
ALTER TABLE secrets DROP CONSTRAINT secrets_kind_check;
ALTER TABLE secrets ADD CONSTRAINT secrets_kind_check
    CHECK (kind IN ('json', 'binary', 'datakey'));
ALTER TABLE secrets ADD COLUMN cmk_arn text;
ALTER TABLE secrets ADD COLUMN period_days integer CHECK (period_days > 0);
ALTER TABLE secrets ADD CONSTRAINT secrets_datakey_has_cmk
    CHECK ((kind = 'datakey') = (cmk_arn IS NOT NULL));
ALTER TABLE secret_versions ADD COLUMN ciphertext bytea;
