-- Dynamic IPs and DDNS (the ddns room): each device's current public address, and the DNS
-- names users gave their devices under the operator's zone. Times are integer milliseconds.

-- The device registry's current public address of a device: what the server saw its session
-- come from, and what the device itself reported (a JSON list, empty until it reports).
CREATE TABLE device_addresses (
    network_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    seen TEXT NOT NULL,
    reported TEXT NOT NULL DEFAULT '[]',
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (network_id, device_id),
    FOREIGN KEY (network_id, device_id) REFERENCES devices (network_id, device_id)
        ON DELETE CASCADE
);

-- One DNS name (<label>.<zone>) per device, and one device per name: the label is unique in
-- the zone, whoever holds it. No foreign key: a deleted device's name stays until the ddns
-- service's sweep has taken its records out of the zone, then the row goes too.
CREATE TABLE ddns_names (
    label TEXT PRIMARY KEY,
    network_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (network_id, device_id)
);
