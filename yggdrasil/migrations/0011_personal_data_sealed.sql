-- Personal data at rest is sealed with AES-256-GCM (yggdrasil/_crypto.py): a sealed value reads
-- 'enc:<key id>:<base64>'. Values written before this migration are marked 'plain:<text>' here,
-- and the server seals them at its next start, before it serves (accounts.seal_personal_data,
-- billing.seal_billing_data), computing the blind indexes that lookups use from then on.

-- users.email is sealed; sign-in finds an address by its keyed blind index (HMAC-SHA256), which
-- is unique as the address was.
ALTER TABLE users ADD COLUMN email_index TEXT;
DROP INDEX users_email;
CREATE UNIQUE INDEX users_email_index ON users (email_index);
UPDATE users SET email = 'plain:' || email WHERE email IS NOT NULL;
UPDATE users SET display_name = 'plain:' || display_name WHERE display_name != '';

-- An identity is found by (issuer, blind index of its subject); subject and e-mail are sealed.
ALTER TABLE identities ADD COLUMN subject_index TEXT;
CREATE UNIQUE INDEX identities_subject_index ON identities (issuer, subject_index);
UPDATE identities SET subject = 'plain:' || subject;
UPDATE identities SET email = 'plain:' || email WHERE email IS NOT NULL;

-- Codes keep only the blind indexes of their address and of the client that asked (email,
-- source) and the sealed display name. Codes live ten minutes: those in flight now are dropped
-- rather than converted (their owners ask for a new one).
DELETE FROM login_codes;

-- A device's name (often its owner's: "Ada's laptop").
UPDATE devices SET name = 'plain:' || name WHERE name != '';

-- Payment and payout methods: the user's label and the provider account's masked address.
UPDATE payment_methods SET label = 'plain:' || label WHERE label != '';
UPDATE payment_methods SET email_masked = 'plain:' || email_masked WHERE email_masked IS NOT NULL;

-- KYC: the reference at the KYC provider (it names a person there) and the decision's reason.
UPDATE kyc SET reference = 'plain:' || reference WHERE reference IS NOT NULL;
UPDATE kyc SET reason = 'plain:' || reason WHERE reason IS NOT NULL;
