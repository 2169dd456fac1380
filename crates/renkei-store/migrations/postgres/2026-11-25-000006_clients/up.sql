-- Registered clients (facility systems, patient apps, auditors, administrators) and the
-- gateway's own token-signing key. Registrations are JSON (renkei_auth::ClientRegistration).
CREATE TABLE clients (
    client_id     TEXT   PRIMARY KEY,
    registration  TEXT   NOT NULL,
    created       BIGINT NOT NULL
);

CREATE TABLE server_keys (
    kid      TEXT   PRIMARY KEY,
    private  TEXT   NOT NULL,
    created  BIGINT NOT NULL
);

-- Client-assertion ids already used (replay protection), kept until they expire.
CREATE TABLE used_assertions (
    jti      TEXT   PRIMARY KEY,
    expires  BIGINT NOT NULL
);
